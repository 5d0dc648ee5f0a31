"""Which landed files have not made it all the way to silver yet.

A file is *done* when bronze quarantined it, or when the silver table built from it carries
its marker: ``silver/telemetry_log`` rows for telemetry, the Delta transaction markers of
``silver/batches`` (MES), ``silver/lab_results`` (LIMS) and ``silver/maintenance_events``
(CMMS). Anything else is unfinished: never ingested, or interrupted between bronze and
silver (a killed run). The landing sensor and ``pharma-twin pipeline`` request work for the
unfinished files, so an interrupted run is completed by the next one.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import amendments, bronze
from .landing_scan import LandedFile
from .storage import Lake

MARKER_TABLE = {
    "mes": "batches",
    "lims": "lab_results",
    "cmms": "maintenance_events",
    "coa": "material_lots",
}


def unfinished(lake: Lake, files: Sequence[LandedFile]) -> list[LandedFile]:
    log = bronze.read_log(lake)
    status = dict(zip(log["source_file"], log["status"], strict=True)) if log.height else {}
    tl = lake.read("silver", "telemetry_log", ["source_file"])
    done = set(tl["source_file"].to_list()) if tl is not None else set()
    for src, name in MARKER_TABLE.items():
        accepted = [f.rel for f in files if f.source == src and status.get(f.rel) == "accepted"]
        done |= lake.written_sources("silver", name, accepted)
    # accepted files overwritten (or touched) in place since: not done until bronze records it
    ledger = {
        r["source_file"]: r
        for r in log.select(
            "source_file", "sha256", "status", "reason", "rows", "bytes", "arrived_at"
        ).iter_rows(named=True)
    }
    changed = {f.rel for f in amendments.changed_in_place(lake, files, ledger)}
    return [
        f
        for f in files
        if f.rel in changed
        or (
            status.get(f.rel) != "quarantined"
            and not (status.get(f.rel) == "accepted" and f.rel in done)
        )
    ]
