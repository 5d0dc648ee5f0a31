"""Command-line entry points of the gateway (registered on ``pharma-twin`` by one line)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)

DEFAULT_OPCUA = "opc.tcp://127.0.0.1:4840/twin"
DEFAULT_MQTT = "127.0.0.1:1883"
DEFAULT_MODBUS = "127.0.0.1:5020"
DEFAULTS = {"opcua": DEFAULT_OPCUA, "mqtt": DEFAULT_MQTT, "modbus": DEFAULT_MODBUS}


def quiet_libraries() -> None:
    """asyncua logs every publish response at INFO (kilobytes a second per subscription)."""
    for name in ("asyncua", "pymodbus", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)


def parse_serve(text: str) -> dict[str, str]:
    """``opcua``, ``mqtt``, ``modbus``, ``opcua,mqtt`` or with addresses
    ``opcua=opc.tcp://0.0.0.0:4840/twin,mqtt=broker:1883,modbus=0.0.0.0:5020``."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        proto, _, addr = part.partition("=")
        if proto not in DEFAULTS:
            raise typer.BadParameter(
                f"--serve: unknown protocol {proto!r}; use opcua, mqtt and/or modbus"
            )
        out[proto] = addr or DEFAULTS[proto]
    if not out:
        raise typer.BadParameter("--serve needs opcua, mqtt and/or modbus")
    return out


def serve_from_live(
    serve: str,
    plant_path: Path | None,
    recipes_path: Path | None,
    units: int,
    out: Path,
    seed: int,
    speed: float,
    period_s: float,
    opcua_shard_size: int | None = None,
) -> None:
    """``pharma-twin live --serve ...``: the twin's units as OPC UA / Sparkplug B endpoints.

    Serving runs on the wall clock (source timestamps are real time, so ``speed`` other
    than 1 is refused: the gateway would reject readings stamped in the future)."""
    from ..twin.config import load_plant, load_recipes
    from .protocols.mqtt_common import MqttSettings
    from .serve import plan_serving, serve_live

    targets = parse_serve(serve)
    if speed != 1.0:
        console.print(f"--serve runs in real time; ignoring --speed {speed:g}")
        speed = 1.0

    def host_port(proto: str) -> tuple[str, int]:
        host, _, port = targets[proto].rpartition(":")
        if not host or not port.isdigit():
            raise typer.BadParameter(f"--serve {proto}={targets[proto]!r}: use host:port")
        return host, int(port)

    mqtt = MqttSettings(*host_port("mqtt")) if "mqtt" in targets else None
    modbus = host_port("modbus") if "modbus" in targets else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    quiet_libraries()
    plant = load_plant(plant_path).with_units(units)
    try:
        plan_serving(plant, list(targets), opcua_shard_size)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    console.print(
        f"serving {units} units live over {', '.join(f'{k} ({v})' for k, v in targets.items())}, "
        f"one step every {period_s:g} s, MES files to {out.resolve()} (Ctrl-C stops)"
    )
    n = serve_live(
        plant,
        load_recipes(recipes_path),
        out,
        list(targets),
        seed,
        speed,
        period_s,
        targets.get("opcua", DEFAULT_OPCUA),
        mqtt,
        modbus_address=modbus or ("127.0.0.1", 5020),
        opcua_shard_size=opcua_shard_size,
    )
    console.print(f"live serving stopped after {n} steps")


def gateway(
    sources: Annotated[Path, typer.Option(help="Sources YAML (see docs/gateway.md).")],
    seconds: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
    workers: Annotated[
        str | None,
        typer.Option(
            help="OPC UA and MQTT sources in N worker processes ('auto': one per core; 0: in "
            "the gateway process). Overrides the sources YAML's 'workers'."
        ),
    ] = None,
) -> None:
    """Run the live gateway: protocols -> hot store + API -> landing telemetry, exactly once."""
    from ..errors import ConfigError
    from .config import load_sources
    from .service import start_service

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    quiet_libraries()
    try:
        cfg = load_sources(sources)
        if workers is not None:
            if workers != "auto" and not workers.isdigit():
                raise typer.BadParameter(f"--workers takes a number or 'auto', got {workers!r}")
            cfg = cfg.model_copy(update={"workers": workers if workers == "auto" else int(workers)})
        svc = start_service(cfg)
    except (ConfigError, ValueError, OSError) as e:
        console.print(f"[red]{e}")
        raise typer.Exit(2) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    api = f"http://{cfg.api.host}:{cfg.api.port}" if cfg.api else "off"
    console.print(
        f"gateway: {len(cfg.sources)} sources"
        + (f" ({len(svc.pool.workers)} worker processes)" if svc.pool else "")
        + f", hot store {cfg.hot_store}, API {api}, "
        f"landing {cfg.landing_dir} (Ctrl-C stops)"
    )
    t0 = time.monotonic()
    try:
        while not stop.wait(0.5):
            if seconds is not None and time.monotonic() - t0 >= seconds:
                break
    except KeyboardInterrupt:
        pass
    svc.stop()
    h = svc.gateway.health()
    console.print(
        f"gateway stopped: {h['landed']} readings landed in {h['files']} files, "
        f"{h['no_batch']} without a batch (hot store only)"
    )


def gateway_api(
    hot_store: Annotated[str, typer.Option(help="redis://host:port/db shared with the gateway.")],
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8766,
    redis_prefix: Annotated[str, typer.Option()] = "pharma:hot",
) -> None:
    """Serve the hot-store API from a separate process (fan-out replicas sharing Redis)."""
    import uvicorn

    from .api import make_app
    from .hotstore import open_hot_store

    if not hot_store.startswith("redis"):
        raise typer.BadParameter(f"--hot-store must be a redis:// URL, got {hot_store!r}")
    uvicorn.run(
        make_app(open_hot_store(hot_store, prefix=redis_prefix)),
        host=host,
        port=port,
        log_level="warning",
    )


def register(app: typer.Typer) -> None:
    app.command("gateway")(gateway)
    app.command("gateway-api")(gateway_api)


__all__ = ["parse_serve", "register", "serve_from_live"]
