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
    max_future_s: float = Field(default=5.0, ge=0)
    max_age_s: float = Field(default=86400.0, gt=0)
    max_buffer_bytes: int = Field(default=1 << 30, gt=0)
    fsync: bool = False
    api: ApiConfig | None = ApiConfig()
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

    sources = [sc.model_copy(update={"register_map": rel(sc.register_map)})
               if isinstance(sc, ModbusSourceConfig) else sc for sc in cfg.sources]  # fmt: skip
    return cfg.model_copy(update={"landing_dir": rel(cfg.landing_dir),
                                  "buffer_dir": rel(cfg.buffer_dir), "sources": sources})  # fmt: skip


__all__ = [
    "GatewayConfig", "ModbusSourceConfig", "MqttSourceConfig", "OpcuaSourceConfig", "load_sources",
]  # fmt: skip
