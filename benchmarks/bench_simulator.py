"""History-mode benchmark: generate and write N batches x ~14 days at 1-minute resolution.

Each run is a fresh subprocess (so peak RSS is that run's alone). Reported: median wall
time of the repeats, batch-minutes and readings per second, peak RSS, and the cost per
batch relative to the 10-batch run measured in the same session (scaling).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from datetime import UTC, datetime
from pharma_assets.twin.config import load_plant, load_recipes
from pharma_assets.twin.history import simulate_history
n, out, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
plant, book = load_plant(), load_recipes()
t0 = time.perf_counter()
if mode == "engine":  # raw baseline: the same integration without telemetry/file writing
    import math
    from pharma_assets.twin.engine import Engine
    from pharma_assets.twin.plant import plan_history
    plan = plan_history(plant, book, n, 42, start=datetime(2026, 1, 5, tzinfo=UTC))
    order = sorted(range(n), key=lambda i: plan.batches[i].end_h)
    bm = 0.0
    for c in range(0, n, 64):
        u = plan.inputs(order[c:c + 64])
        Engine(u, seed=c).run(math.ceil(float(u.end_h.max()) * 60) + 1)
        bm += float(u.end_h.sum()) * 60
    res = {"batch_minutes": bm, "readings": 0, "files": 0}
else:
    r = simulate_history(plant, book, n, 42, out, start=datetime(2026, 1, 5, tzinfo=UTC))
    res = {"batch_minutes": r.batch_minutes, "readings": r.readings_written, "files": r.files_written}
res["seconds"] = time.perf_counter() - t0
res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(res))
"""


def run_once(n: int, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(n), str(Path(d) / "landing"), mode],
            check=True,
            capture_output=True,
            text=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(sizes: tuple[int, ...] = (10, 25, 50, 100), repeats: int = 3) -> list[dict]:
    rows = []
    for n in sizes:
        runs = [run_once(n, "full") for _ in range(repeats)]
        eng = [run_once(n, "engine") for _ in range(repeats)]
        med = statistics.median(r["seconds"] for r in runs)
        rows.append(
            {
                "batches": n,
                "median_s": med,
                "runs_s": [round(r["seconds"], 2) for r in runs],
                "engine_only_median_s": statistics.median(r["seconds"] for r in eng),
                "batch_minutes": runs[0]["batch_minutes"],
                "readings": runs[0]["readings"],
                "files": runs[0]["files"],
                "batch_minutes_per_s": runs[0]["batch_minutes"] / med,
                "readings_per_s": runs[0]["readings"] / med,
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["median_s"] / rows[0]["batches"]
    for r in rows:
        r["cost_per_batch_vs_10"] = (r["median_s"] / r["batches"]) / base
    return rows


if __name__ == "__main__":
    main()
