"""`make demo`: serve the dashboards, fill in the history, then run the plant live.

`make demo` materializes a first slice of the simulated history (the latest batches of each
unit, `pharma-twin pipeline --latest`) before it starts this module, so the dashboards show
the plant within minutes. This module starts, each in its own process group, the Streamlit
app (:8501) and the MLflow UI (:5000, SQLite tracking store under .state/) at once; with
``PHARMA_DEMO_BACKFILL=1`` it then fills in the rest of the history in the foreground, with
its progress bar (`pharma-twin pipeline`, then `pharma-twin train --if-untrained`; the
dashboards show each batch as it lands), and only then starts `dagster dev` (UI on :3000,
the daemon running the landing sensor: started earlier, it would ingest the same backlog
beside the backfill) and the live simulator writing new chunks into the landing zone.
Ctrl-C (or SIGTERM) stops every process it started.

Live data comes over the plant's protocols by default (``PHARMA_DEMO_LIVE=protocols``): the
twin serves its units as an OPC UA server (``pharma-twin live --serve opcua``, real time,
1 Hz; also as a Sparkplug B edge node when an MQTT broker answers on 127.0.0.1:1883), and
the gateway (``pharma-twin gateway``, API on :8765) subscribes over OPC UA, raises the CPP
alarms, serves the Live page and lands telemetry chunks for the Dagster sensor. The
gateway subscribes to OPC UA only, so a reading is not ingested twice when the twin also
publishes it over MQTT; without a broker the demo runs on OPC UA alone (no broker is
shipped). ``PHARMA_DEMO_PLANT=plant.yaml`` serves a plant whose units name their protocol
(docs/examples/plant_mixed_protocols.yaml: OPC UA, MQTT and a Modbus skid), and the
gateway's sources follow it (``gateway_sources_for``).

``PHARMA_DEMO_LIVE=files`` runs the file-writing live simulator instead: its clock starts at
00:00 UTC yesterday, just after the history ends, and runs 60x faster than real time until
it reaches the wall clock (24-48 minutes later); from then on it runs at real time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _start(name: str, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "ab")  # noqa: SIM115 - lives as long as the child
    print(f"  starting {name}: {' '.join(cmd)}  (log: {log.relative_to(ROOT)})")
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(procs: dict[str, subprocess.Popen[bytes]], grace_s: float = 15.0) -> None:
    """SIGTERM every started process group (each service with all its children: the Dagster
    daemon, code server and run workers, MLflow's workers), wait, then SIGKILL what is left
    of a group, so nothing keeps running after Ctrl-C."""
    for p in procs.values():
        if _group_alive(p.pid):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for name, p in procs.items():
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        while _group_alive(p.pid) and time.monotonic() < deadline:
            time.sleep(0.2)  # the leader exited; its children are still shutting down
        if _group_alive(p.pid):
            os.killpg(p.pid, signal.SIGKILL)
            print(f"  {name} did not stop in {grace_s:.0f} s: killed")
        if p.poll() is None:
            p.wait()
        print(f"  stopped {name}")


def demo_logins(lake_uri: str) -> list[tuple[str, str, str]]:
    """Create the demo users once and return their logins. Passwords are shown only when an
    account is created, so they are kept in .state/demo_logins.txt (mode 0600) for reruns."""
    from pharma_assets.compliance.users import create_demo_users
    from pharma_assets.lake.storage import Lake

    saved = ROOT / ".state" / "demo_logins.txt"
    known = {}
    if saved.exists():
        known = {u: (r, p) for u, r, p in (ln.split("\t") for ln in saved.read_text().splitlines())}
    rows = [
        (u, r, known.get(u, (r, p))[1] if p == "(unchanged)" else p)
        for u, r, p in create_demo_users(Lake.at(lake_uri))
    ]
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text("".join(f"{u}\t{r}\t{p}\n" for u, r, p in rows))
    saved.chmod(0o600)
    return rows


def demo_promotion_policy(lake_uri: str) -> str:
    """Put the auto-promotion policy in force in the demo lake (once): its approved baseline
    is recorded under change control, signed by the demo QA lead. From then on a first model
    version that passes the promotion gate becomes champion signed by the system under that
    policy (so the dashboards and live scoring have champions), and later versions wait for
    a QA signature on the Models page unless the policy's margin allows (docs/models.md)."""
    from pharma_assets.compliance.changecontrol import apply_change, history
    from pharma_assets.compliance.promotions import POLICY_TARGET, policy_path
    from pharma_assets.lake.storage import Lake

    lake = Lake.at(lake_uri)
    logins = {u: p for u, _, p in demo_logins(lake_uri)}
    h = history(lake, POLICY_TARGET)
    if h.height:
        return f"auto-promotion policy already under change control ({h['change_id'][-1]})"
    p = policy_path()
    row = apply_change(
        lake,
        p,
        p.read_text(),
        "qa.lead",
        logins["qa.lead"],
        "demo: approved baseline of the auto-promotion policy",
        POLICY_TARGET,
    )
    return f"auto-promotion policy {p.name} approved by qa.lead ({row['change_id']})"


def broker_reachable(host: str = "127.0.0.1", port: int = 1883, timeout_s: float = 1.0) -> bool:
    """Whether an MQTT broker accepts TCP connections (the demo then also serves MQTT)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def demo_mixed_plant(path: Path, units: int) -> Path:
    """The built-in plant with ``units`` units, the first ``ceil(units / 2)`` served over
    OPC UA and the rest over MQTT Sparkplug B (the demo's plant when a broker answers), so
    the gateway subscribes to both and no unit arrives twice."""
    import yaml

    from .twin.config import load_plant

    if units < 1:
        raise ValueError(f"the demo needs at least 1 unit, got {units}")
    data = load_plant(None).with_units(units).model_dump(mode="json", exclude_none=True)
    ids = [u["unit_id"] for a in data["areas"] for u in a["units"]]
    on_opc = set(ids[: (units + 1) // 2])
    for a in data["areas"]:
        a.pop("protocol", None)
        for u in a["units"]:
            u["protocol"] = "opcua" if u["unit_id"] in on_opc else "mqtt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# written by pharma_assets/demo.py: the built-in plant, units split between OPC UA "
        "and MQTT\n" + yaml.safe_dump(data, sort_keys=False)
    )
    return path


def gateway_sources(
    path: Path,
    landing: Path,
    lake: str,
    units: int,
    serve: str = "opcua",
    plant_path: str | None = None,
) -> Path:
    """The demo gateway's sources YAML, from the same serve plan the twin follows
    (``plan_serving``: each unit over the protocol the plant YAML gives it, else over
    OPC UA): alarms into the demo lake."""
    import yaml

    from .gateway.serve import gateway_sources_for, plan_serving
    from .twin.config import load_plant

    plan = plan_serving(load_plant(plant_path).with_units(units), serve.split(","))
    cfg = {
        "site_id": "SITE01",
        "landing_dir": str(landing),
        "buffer_dir": str(ROOT / ".state" / "gateway"),
        "hot_store": "memory",
        "api": {"host": "127.0.0.1", "port": 8765, "write_token_env": "PHARMA_GATEWAY_TOKEN"},
        "alarms": {"lake_dir": lake, "on_delay_s": 5, "notify_min_priority": "high"},
        "sources": gateway_sources_for(plan, path.parent / "demo_gateway_maps"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# written by pharma_assets/demo.py for {units} units\n" + yaml.safe_dump(cfg))
    return path


def _backfill(env: dict[str, str], procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """The rest of the history, then the models, in the foreground (progress on the terminal)
    while the dashboards already serve the first slice."""
    print("\n  The dashboards show the first slice now; filling in the rest of the history:")
    t0 = time.monotonic()
    for name, cmd in (
        ("backfill", [str(BIN / "pharma-twin"), "pipeline"]),
        ("training", [str(BIN / "pharma-twin"), "train", "--if-untrained"]),
    ):
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
        while procs[name].poll() is None:
            for other, p in procs.items():
                if other != name and p.poll() is not None:
                    print(f"  {other} exited with code {p.returncode}")
                    raise KeyboardInterrupt
            time.sleep(1)
        code = procs.pop(name).returncode
        if code != 0:
            print(f"  {name} ended with code {code} (see above); the services start anyway")
    print(f"  history filled in after {time.monotonic() - t0:.0f} s\n")


def main() -> int:
    from pharma_assets.lake.storage import DEFAULT_LAKE_URI, LAKE_URI_ENV, lake_uri_from_env

    landing = Path(os.environ.get("PHARMA_LANDING_DIR", "landing")).resolve()
    # the configured lake root; unset, the repository's own (make demo runs from anywhere)
    lake = lake_uri_from_env() if LAKE_URI_ENV in os.environ else str(ROOT / DEFAULT_LAKE_URI)
    if "://" not in lake:
        lake = str(Path(lake).resolve())
    env = {**os.environ, "PHARMA_LANDING_DIR": str(landing), LAKE_URI_ENV: lake}
    env.pop("DAGSTER_HOME", None)  # use the repository's dagster.yaml (SQLite under .state/)
    logs = ROOT / ".state" / "logs"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    backfill = os.environ.get("PHARMA_DEMO_BACKFILL") == "1"

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        procs["streamlit"] = _start(
            "Streamlit dashboards",
            [
                str(BIN / "streamlit"),
                "run",
                "dashboards/app.py",
                "--server.port",
                "8501",
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
            ],
            env,
            logs / "streamlit.log",
        )
        mlflow_uri = env.get(
            "PHARMA_MLFLOW_URI", f"sqlite:///{ROOT / '.state' / 'mlflow' / 'mlflow.db'}"
        )
        (ROOT / ".state" / "mlflow").mkdir(parents=True, exist_ok=True)
        procs["mlflow"] = _start(
            "MLflow UI",
            [
                str(BIN / "mlflow"),
                "ui",
                "--backend-store-uri",
                mlflow_uri,
                "--host",
                "127.0.0.1",
                "--port",
                "5000",
                "--workers",
                "1",
            ],
            # one web worker and no job runner (its 7 huey consumers serve GenAI jobs we do
            # not use): 2 processes, ~0.65 GB instead of 11 and ~2.3 GB
            {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            logs / "mlflow.log",
        )
        print()
        print(
            "  Demo logins (every dashboard page asks for one; view.only is read-only;"
            " also in .state/demo_logins.txt):"
        )
        for uid, role, pw in demo_logins(lake):
            print(f"    {uid:<10} {role:<18} {pw}")
        print()
        later = " (starts once the history is filled in)" if backfill else ""
        print(
            "  Dagster UI:   http://127.0.0.1:3000   (Assets: bronze/silver/gold/ml/gxp groups; "
            f"Automation: the sensors){later}"
        )
        print("  Dashboards:   http://127.0.0.1:8501   (Live page: pushed by the gateway)")
        print("  MLflow UI:    http://127.0.0.1:5000   (registered models, champion aliases)")
        print("  Promotions:   Models page (qa.lead approves/rejects), `pharma-twin model pending`")
        print(f"  Lake:         {lake}")
        print(f"  Landing zone: {landing}")
        if backfill:
            _backfill(env, procs)
        procs["dagster"] = _start(
            "Dagster UI + daemon",
            [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", "3000"],
            env,
            logs / "dagster.log",
        )
        mode = os.environ.get("PHARMA_DEMO_LIVE", "protocols")
        units = os.environ.get("PHARMA_DEMO_UNITS", "6")
        if mode == "files":
            procs["live"] = _start(
                "live simulator",
                [
                    str(BIN / "pharma-twin"),
                    "live",
                    "--out",
                    str(landing),
                    "--start",
                    "yesterday",
                    "--speed",
                    "60",
                ],
                env,
                logs / "live.log",
            )
        else:
            mqtt_up = broker_reachable()
            serve = "opcua,mqtt" if mqtt_up else "opcua"
            plant_path = os.environ.get("PHARMA_DEMO_PLANT")  # a plant YAML with protocols
            if plant_path:
                serve += ",modbus"
            elif mqtt_up:  # both paths feed the Live page: half the units over each
                plant_path = str(demo_mixed_plant(ROOT / ".state" / "demo_plant.yaml", int(units)))
            env["PHARMA_GATEWAY_TOKEN"] = env.get("PHARMA_GATEWAY_TOKEN") or secrets.token_hex(16)
            procs["live"] = _start(
                f"twin serving {serve}",
                [
                    str(BIN / "pharma-twin"),
                    "live",
                    "--serve",
                    serve,
                    "--out",
                    str(landing),
                    "--units",
                    units,
                    "--period",
                    "1s",
                    *(["--plant", plant_path] if plant_path else []),
                ],
                env,
                logs / "live.log",
            )
            src = gateway_sources(
                ROOT / ".state" / "demo_gateway.yaml", landing, lake, int(units), serve, plant_path
            )
            procs["gateway"] = _start(
                "live gateway",
                [str(BIN / "pharma-twin"), "gateway", "--sources", str(src)],
                env,
                logs / "gateway.log",
            )
            print(
                "  Gateway API:  http://127.0.0.1:8765/health   (OPC UA twin at opc.tcp://127.0.0.1:4840/twin)"
            )
        print(
            "  Live plant:   "
            + (
                "the gateway lands telemetry every 5 s"
                if "gateway" in procs
                else "the live simulator adds a chunk per unit every ~10 s"
            )
        )
        print("  Ctrl-C stops everything.")
        while True:
            for name, p in procs.items():
                if p.poll() is not None:
                    print(f"  {name} exited with code {p.returncode}; see {logs}/{name}.log")
                    raise KeyboardInterrupt
            time.sleep(1)
    except KeyboardInterrupt:
        print("\n  stopping ...")
    finally:
        _stop(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
