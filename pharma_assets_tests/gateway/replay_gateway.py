"""A gateway process fed by a replayable source, for the SIGKILL exactly-once test.

    python -m pharma_assets_tests.gateway.replay_gateway BUFFER LANDING T0_US STEPS UNITS [MODE]

Each run replays the whole series from the start (as a historian replay or a broker's
redelivery would) while flushing every 50 ms (MODE ``thread``, the default, or ``process``:
a flusher process writes the landing files); the gateway must land each reading once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pharma_assets.gateway.coldpath import ColdPath
from pharma_assets.gateway.core import Gateway
from pharma_assets.gateway.hotstore import MemoryHotStore
from pharma_assets.gateway.mapping import SourceMap
from pharma_assets.twin.config import CANONICAL_TAGS

TAGS = list(CANONICAL_TAGS)


def value(k: int, u: int, j: int) -> float:
    return k * 1000.0 + u * 100.0 + j


def main() -> None:
    buf, landing, t0, steps, units = sys.argv[1:6]
    mode = sys.argv[6] if len(sys.argv) > 6 else "thread"
    gw = Gateway(
        "SITE01", MemoryHotStore(), ColdPath(Path(buf), Path(landing)), max_age_s=10 * 86400
    )
    gw.start_flusher(0.05, process=mode == "process")
    smap = SourceMap("replay")
    for k in range(int(steps)):
        for u in range(int(units)):
            unit = f"BR{u + 1:02d}"
            items = [
                (t, value(k, u, j), None, int(t0) + k * 1_000_000, 0) for j, t in enumerate(TAGS)
            ]
            gw.ingest("replay", smap, unit, f"{unit}-B0001", items)
        if k % 20 == 0:
            time.sleep(0.002)
    gw.stop()
    print("done", gw.cold.state["landed"] if gw.cold else 0, flush=True)


if __name__ == "__main__":
    main()
