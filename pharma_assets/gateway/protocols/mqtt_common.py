"""MQTT connection settings shared by the Sparkplug B edge node and host (paho-mqtt 2)."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

import paho.mqtt.client as mqtt


@dataclass(frozen=True)
class MqttSettings:
    """Where and how to connect; ``password_env`` names an environment variable (no
    secrets in YAML). ``ca_certs`` switches TLS on (``certfile``/``keyfile`` for mutual TLS)."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    username: str | None = None
    password_env: str | None = None
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keepalive: int = 30


def make_client(
    s: MqttSettings, client_id: str, clean_session: bool, manual_ack: bool = False
) -> mqtt.Client:
    """A paho client with credentials, TLS and 1-30 s reconnect backoff applied
    (``manual_ack``: QoS 1 messages are acknowledged by ``client.ack``, not on return)."""
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    if s.username is not None:
        pw = os.environ.get(s.password_env) if s.password_env else None
        if s.password_env and pw is None:
            raise ValueError(f"MQTT password variable {s.password_env!r} is not set")
        c.username_pw_set(s.username, pw)
    if s.ca_certs:
        c.tls_set(
            ca_certs=s.ca_certs,
            certfile=s.certfile,
            keyfile=s.keyfile,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    c.reconnect_delay_set(1, 30)
    c.max_queued_messages_set(0)
    return c
