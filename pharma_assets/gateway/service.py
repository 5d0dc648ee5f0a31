"""The long-running gateway service: sources + hot store + cold path + API in one process."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from ..lake.specs import load_spec
from ..lake.storage import Lake
from .alarm_service import AlarmService
from .alarms import AlarmSettings, MesPhases
from .coldpath import ColdPath
from .config import (
    AlarmConfig,
    GatewayConfig,
    ModbusSourceConfig,
    MqttSourceConfig,
    OpcuaSourceConfig,
    WebhookConfig,
)
from .core import Gateway
from .hotstore import open_hot_store
from .notify import Notifier, SmtpNotifier, WebhookNotifier
from .protocols.modbus import ModbusSource, load_register_map
from .protocols.mqtt_common import MqttSettings
from .protocols.opcua import OpcuaSource
from .protocols.sparkplug import SparkplugHost
from .records import now_us
from .unit_phases import ClassPhases, UnitSpecs

log = logging.getLogger(__name__)


@dataclass
class GatewayService:
    cfg: GatewayConfig
    gateway: Gateway
    sources: list[Any] = field(default_factory=list)
    api_server: Any = None
    api_thread: threading.Thread | None = None
    alarms: AlarmService | None = None
    phases: MesPhases | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _publisher: threading.Thread | None = None

    def health(self) -> dict[str, Any]:
        h = self.gateway.health()
        h["alarms"] = self.alarms.health() if self.alarms is not None else None
        return h

    def publish(self) -> None:
        """Put the health and the open alarms into the hot store (fan-out replicas and the
        dashboards read them there); also ends the shelves that expired."""
        hot = self.gateway.hot
        if self.alarms is not None:
            self.alarms.engine.expire_shelves()
            hot.set_doc("alarms", self.alarms.engine.open_alarms())
        hot.set_doc("health", self.health())
        hot.set_doc("units", self.unit_states())

    def unit_states(self) -> dict[str, dict[str, Any]]:
        """Each unit's current batch (as the latest message named it) and phase (MES)."""
        out: dict[str, dict[str, Any]] = {}
        now = now_us()
        for u in self.gateway.hot.units():
            b = self.gateway.batch_of(u)
            ph = self.phases.phase_at(u, b, now) if (b and self.phases is not None) else None
            out[u] = {"batch_id": b, "phase": ph[0] if ph else None}
        return out

    def start_publisher(self, interval_s: float = 1.0) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.publish()
                except Exception:
                    log.exception("publishing the gateway health failed")

        self.publish()
        self._publisher = threading.Thread(target=loop, name="gateway-publisher", daemon=True)
        self._publisher.start()

    def stop(self) -> None:
        """Stop the sources, then drain the disk buffer into the landing zone."""
        self._stop.set()
        if self._publisher is not None:
            self._publisher.join(10)
        for s in self.sources:
            s.stop()
        if self.api_server is not None:
            self.api_server.should_exit = True
            if self.api_thread is not None:
                self.api_thread.join(10)
        self.gateway.stop()
        if self.alarms is not None:
            self.alarms.close()
        self.gateway.hot.close()


def start_alarms(ac: AlarmConfig, phases: MesPhases) -> AlarmService:
    """The alarm service of an ``alarms:`` section (phases from the landing zone's MES files)."""
    notifiers: list[Notifier] = []
    for n in ac.notifiers:
        if isinstance(n, WebhookConfig):
            notifiers.append(WebhookNotifier(n.url, n.timeout_s))
        else:
            notifiers.append(
                SmtpNotifier(
                    n.host, n.port, n.sender, n.recipients, n.starttls, n.username, n.password_env
                )
            )
    settings = AlarmSettings(
        on_delay_s=ac.on_delay_s,
        deadband_frac=ac.deadband_frac,
        max_shelve_s=ac.max_shelve_s,
        **({"critical_after_s": ac.critical_after_s} if ac.critical_after_s else {}),
    )
    default = load_spec(ac.spec)
    # each unit judged by its class's spec and phase rule (MES phase events win)
    specs = UnitSpecs(default, {u: load_spec(p) for u, p in ac.unit_specs.items()})
    return AlarmService(
        Lake.at(ac.lake_dir),
        default,
        ClassPhases(specs, phases),
        settings,
        notifiers,
        ac.notify_min_priority,
        ac.flush_interval_s,
        ac.open_deviations,
        unit_specs=specs,
    )


def start_service(cfg: GatewayConfig) -> GatewayService:
    """Build the gateway from ``cfg``, connect every source and start the API."""
    hot = open_hot_store(cfg.hot_store, cfg.window_s, cfg.stale_after_s, cfg.redis_prefix)
    cold = ColdPath(cfg.buffer_dir, cfg.landing_dir, cfg.max_buffer_bytes, cfg.fsync)
    gw = Gateway(cfg.site_id, hot, cold, cfg.max_future_s, cfg.max_age_s)
    svc = GatewayService(cfg, gw, phases=MesPhases(cfg.landing_dir))
    gw.batch_resolver = svc.phases.batch_at if svc.phases is not None else None
    if cfg.alarms is not None:
        assert svc.phases is not None
        svc.alarms = start_alarms(cfg.alarms, svc.phases)
        gw.alarms = svc.alarms.engine
        svc.alarms.engine.sinks.append(
            lambda _ev: hot.set_doc("alarms", gw.alarms.open_alarms() if gw.alarms else [])
        )
    for sc in cfg.sources:
        smap = sc.source_map()
        if isinstance(sc, MqttSourceConfig):
            settings = MqttSettings(
                host=sc.host,
                port=sc.port,
                client_id=sc.client_id or f"pharma-gateway-{sc.name}",
                username=sc.username,
                password_env=sc.password_env,
                ca_certs=sc.tls.ca_certs if sc.tls else None,
                certfile=sc.tls.certfile if sc.tls else None,
                keyfile=sc.tls.keyfile if sc.tls else None,
            )
            host = SparkplugHost(
                gw,
                sc.name,
                smap,
                settings,
                sc.group_id,
                sc.qos,
                cfg.buffer_dir / f"sparkplug-{sc.name}.json",
            )
            host.start(timeout=5)
            svc.sources.append(host)
        elif isinstance(sc, OpcuaSourceConfig):
            pw = os.environ.get(sc.password_env) if sc.password_env else None
            if sc.password_env and pw is None:
                raise ValueError(
                    f"source {sc.name}: password variable {sc.password_env!r} is not set"
                )
            src = OpcuaSource(
                gw,
                sc.name,
                smap,
                sc.url,
                sc.site_id or cfg.site_id,
                sc.publishing_interval_ms,
                sc.watchdog_s,
                sc.reconnect_max_delay_s,
                sc.security,
                sc.username,
                pw,
            )
            src.start_in_thread()
            svc.sources.append(src)
        elif isinstance(sc, ModbusSourceConfig):
            mb = ModbusSource(
                gw,
                sc.name,
                smap,
                sc.host,
                sc.port,
                sc.devices,
                load_register_map(sc.register_map),
                sc.poll_interval_s,
                sc.timeout_s,
            )
            mb.start_in_thread()
            svc.sources.append(mb)
    gw.start_flusher(cfg.flush_interval_s, process=cfg.flush_process)
    svc.start_publisher()
    if cfg.api is not None:
        import uvicorn

        from .api import make_app

        token = os.environ.get(cfg.api.write_token_env) if cfg.api.write_token_env else None
        app = make_app(hot, svc.health, svc.alarms, token)
        server = uvicorn.Server(
            uvicorn.Config(app, host=cfg.api.host, port=cfg.api.port, log_level="warning")
        )
        t = threading.Thread(target=server.run, name="gateway-api", daemon=True)
        t.start()
        svc.api_server, svc.api_thread = server, t
    log.info(
        "gateway up: %d sources, hot store %s, landing %s",
        len(svc.sources),
        cfg.hot_store,
        cfg.landing_dir,
    )
    return svc


__all__ = ["GatewayService", "start_alarms", "start_service"]
