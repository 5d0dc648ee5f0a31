"""The gateway's sources YAML: where to connect and how to map, validated on load.

Example (``docs/examples/gateway_sources.yaml`` documents every field)::

    site_id: SITE01
    landing_dir: landing          # the landing zone the Dagster sensors watch
    buffer_dir: .gateway          # disk buffer (WAL), state and rejected.jsonl
    hot_store: memory             # or redis://127.0.0.1:6379/0
    api: {host: 127.0.0.1, port: 8765}
    sources:
      - name: twin-mqtt
        kind: mqtt_sparkplug
        host: 127.0.0.1
        port: 1883
        group_id: SITE01
      - name: twin-opcua
        kind: opcua
        url: opc.tcp://127.0.0.1:4840/twin
        tags:                     # the importer's tag-map entries
          TT101: {tag: temperature_c, from_uom: K}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError
from .mapping import SourceMap, TagMapping


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Source(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    tags: dict[str, TagMapping] = Field(default_factory=dict)
    units: dict[str, str] = Field(default_factory=dict)
    canonical_names: bool = True

    def source_map(self) -> SourceMap:
        return SourceMap(self.name, self.tags, self.units, self.canonical_names)


class TlsConfig(_Model):
    ca_certs: str
    certfile: str | None = None
    keyfile: str | None = None


class MqttSourceConfig(_Source):
    kind: Literal["mqtt_sparkplug"]
    host: str = "127.0.0.1"
    port: int = Field(default=1883, gt=0, lt=65536)
    group_id: str
    qos: Literal[0, 1] = 1
    client_id: str | None = None
    username: str | None = None
    password_env: str | None = None
    tls: TlsConfig | None = None


class OpcuaSourceConfig(_Source):
    kind: Literal["opcua"]
    url: str = Field(pattern=r"^opc\.tcp://")
    site_id: str | None = None  # site folder to browse (default: the gateway's site_id)
    publishing_interval_ms: float = Field(default=50.0, gt=0)
    watchdog_s: float = Field(default=10.0, gt=0)
    reconnect_max_delay_s: float = Field(default=30.0, gt=0)
    security: str | None = None  # e.g. "Basic256Sha256,SignAndEncrypt,cert.der,key.pem"
    username: str | None = None
    password_env: str | None = None


class ModbusSourceConfig(_Source):
    kind: Literal["modbus"]
    host: str = "127.0.0.1"
    port: int = Field(default=502, gt=0, lt=65536)
    devices: dict[str, int] = Field(min_length=1)  # unit (or device name) -> Modbus device id
    register_map: Path  # register map YAML (relative to the sources file)
    poll_interval_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)


class ApiConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8765, gt=0, lt=65536)
    # Bearer token for the alarm actions (acknowledge/shelve), read from this environment
    # variable; the dashboard server sends it with the logged-in user. Unset: actions off.
    write_token_env: str | None = "PHARMA_GATEWAY_TOKEN"


class WebhookConfig(_Model):
    kind: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    timeout_s: float = Field(default=5.0, gt=0)


class SmtpConfig(_Model):
    kind: Literal["smtp"]
    host: str
    port: int = Field(default=25, gt=0, lt=65536)
    sender: str
    recipients: list[str] = Field(min_length=1)
    starttls: bool = False
    username: str | None = None
    password_env: str | None = None


class AlarmConfig(_Model):
    """Real-time CPP alarms (``alarms``): where the GxP records live and how to judge."""

    lake_dir: Path  # the lake holding gxp/ (alarm_events, deviations, users, audit trail)
    spec: Path | None = None  # CPP spec YAML (default: the packaged, change-controlled one)
    # unit id -> that unit's own product spec (its unit class's tags, phases, phase rule and
    # CPP limits): a dryer judged by its spec, never the default (bioreactor) one
    unit_specs: dict[str, Path] = Field(default_factory=dict)
    on_delay_s: float = Field(default=5.0, ge=0)
    deadband_frac: float = Field(default=0.02, ge=0, lt=0.5)
    critical_after_s: float | None = Field(default=None, gt=0)  # default: gold's rule
    max_shelve_s: float = Field(default=8 * 3600.0, gt=0)
    open_deviations: bool = True
    flush_interval_s: float = Field(default=2.0, gt=0)
    notify_min_priority: Literal["low", "medium", "high", "urgent"] = "high"
    notifiers: list[Annotated[WebhookConfig | SmtpConfig, Field(discriminator="kind")]] = Field(
        default_factory=list
    )


SourceConfig = Annotated[
    MqttSourceConfig | OpcuaSourceConfig | ModbusSourceConfig, Field(discriminator="kind")
]


class GatewayConfig(_Model):
    site_id: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    landing_dir: Path = Path("landing")
    buffer_dir: Path = Path(".gateway")
    hot_store: str = "memory"
    redis_prefix: str = "pharma:hot"
    window_s: float = Field(default=7200.0, ge=7200)
    stale_after_s: float = Field(default=10.0, gt=0)
    flush_interval_s: float = Field(default=5.0, gt=0)
    # write the landing files in a separate flusher process (ingest keeps its GIL); false:
    # a thread of the gateway process
    flush_process: bool = True
    max_future_s: float = Field(default=5.0, ge=0)
    max_age_s: float = Field(default=86400.0, gt=0)
    max_buffer_bytes: int = Field(default=1 << 30, gt=0)
    fsync: bool = False
    api: ApiConfig | None = ApiConfig()
    alarms: AlarmConfig | None = None
    sources: list[SourceConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> GatewayConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique: {dupes}")
        if not self.hot_store == "memory" and not self.hot_store.startswith("redis"):
            raise ValueError(f"hot_store {self.hot_store!r} is neither 'memory' nor a redis:// URL")
        return self


def load_sources(path: Path) -> GatewayConfig:
    """Load and validate a sources YAML; relative folders are taken from the file's folder.

    Raises ``ConfigError`` naming the file and the field.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sources file {p} does not exist")
    try:
        data: Any = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"sources file {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"sources file {p} must be a YAML mapping, got {type(data).__name__}")
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or '<root>'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"sources file {p} is invalid: {problems}") from e
    base = p.parent

    def rel(x: Path) -> Path:
        return x if x.is_absolute() else base / x

    sources = [
        sc.model_copy(update={"register_map": rel(sc.register_map)})
        if isinstance(sc, ModbusSourceConfig)
        else sc
        for sc in cfg.sources
    ]
    alarms = cfg.alarms
    if alarms is not None:
        alarms = alarms.model_copy(
            update={
                "lake_dir": rel(alarms.lake_dir),
                "spec": rel(alarms.spec) if alarms.spec else None,
            }
        )
    return cfg.model_copy(
        update={
            "landing_dir": rel(cfg.landing_dir),
            "alarms": alarms,
            "buffer_dir": rel(cfg.buffer_dir),
            "sources": sources,
        }
    )


__all__ = [
    "AlarmConfig",
    "GatewayConfig",
    "ModbusSourceConfig",
    "MqttSourceConfig",
    "OpcuaSourceConfig",
    "load_sources",
]
