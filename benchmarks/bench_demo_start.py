"""Time to the first dashboard of `make demo`, and the demo's whole pipeline time.

``python -m benchmarks.bench_demo_start [--batches 100] [--first-slice 2] [--backfill]``
replays `make demo` (virtualenv present) in a temporary folder with its own lake, landing
zone and ``DAGSTER_HOME``, with the same commands: ``pharma-twin simulate`` (6 units, seed
42), ``pharma-twin pipeline --latest FIRST_SLICE`` (the first slice: the latest batches of
each unit, bronze -> silver -> gold), then the Streamlit app on a spare port. The clock
stops when the app answers its health endpoint and ``gold/unit_status`` and
``gold/batch_summary`` hold every unit: what the overview page shows. With ``--backfill``
it goes on as the demo does: ``pharma-twin pipeline`` for the rest of the history (timed:
the demo's pipeline time for the whole history is first slice + backfill).

Every figure is one run (minutes each); the load average is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PORT = 8599


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def _run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _plant_shown(lake_dir: Path, units: int) -> bool:
    """What the overview page needs: every unit in gold/unit_status, batches in the summary."""
    from pharma_assets.lake.storage import Lake

    lake = Lake.at(lake_dir)
    status, summary = lake.read("gold", "unit_status"), lake.read("gold", "batch_summary")
    return (
        status is not None and status.height >= units and summary is not None and summary.height > 0
    )


def measure(batches: int, first_slice: int, backfill: bool, units: int = 6) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix="pharma-demo-start-"))
    env = {
        **os.environ,
        "PHARMA_LANDING_DIR": str(d / "landing"),
        "PHARMA_LAKE_URI": str(d / "lake"),
        "DAGSTER_HOME": str(d / "dagster_home"),
    }
    (d / "dagster_home").mkdir()
    (d / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    res: dict[str, Any] = {
        "batches": batches,
        "units": units,
        "first_slice": first_slice,
        "load_start": _load(),
    }
    app: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.perf_counter()
        res["simulate_s"] = _run(
            [
                str(BIN / "pharma-twin"),
                "simulate",
                "--units",
                str(units),
                "--batches",
                str(batches),
                "--seed",
                "42",
                "--out",
                str(d / "landing"),
            ],
            env,
        )
        res["first_slice_s"] = _run(
            [str(BIN / "pharma-twin"), "pipeline", "--latest", str(first_slice)], env
        )
        app = subprocess.Popen(
            [
                str(BIN / "streamlit"),
                "run",
                "dashboards/app.py",
                "--server.port",
                str(PORT),
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        ts = time.perf_counter()
        deadline = ts + 300
        while not (_healthy(PORT) and _plant_shown(d / "lake", units)):
            if time.perf_counter() > deadline or app.poll() is not None:
                raise RuntimeError("the dashboards did not come up within 300 s")
            time.sleep(0.25)
        res["dashboard_start_s"] = time.perf_counter() - ts
        res["first_dashboard_s"] = time.perf_counter() - t0
        res["load_first_dashboard"] = _load()
        print(json.dumps(res), file=sys.stderr, flush=True)  # before the (long) backfill
        if backfill:
            res["backfill_s"] = _run([str(BIN / "pharma-twin"), "pipeline"], env)
            res["pipeline_total_s"] = res["first_slice_s"] + res["backfill_s"]
            res["load_end"] = _load()
    finally:
        if app is not None and app.poll() is None:
            os.killpg(app.pid, 15)
            app.wait(30)
        shutil.rmtree(d, ignore_errors=True)
    return res


def line(r: dict[str, Any]) -> str:
    out = (
        f"| {r['batches']} x {r['units']} units | {r['first_slice']} per unit | {r['simulate_s']:.0f} | "
        f"{r['first_slice_s']:.0f} | {r['dashboard_start_s']:.0f} | **{r['first_dashboard_s']:.0f}** | "
        f"{r.get('backfill_s', float('nan')):.0f} | {r.get('pipeline_total_s', float('nan')):.0f} | "
        f"{r['load_start']} -> {r.get('load_end', r['load_first_dashboard'])} |"
    )
    return out.replace("nan", "-")


HEADER = (
    "| history | first slice | simulate s | first-slice pipeline s | dashboards up s | "
    "**to first dashboard s** | backfill pipeline s | demo pipeline total s | load avg |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--first-slice", type=int, default=2)
    ap.add_argument("--backfill", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    r = measure(a.batches, a.first_slice, a.backfill)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    print(HEADER)
    print(line(r))


if __name__ == "__main__":
    main()
