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

from . import bronze
from .landing_scan import LandedFile
from .storage import Lake, source_app_id

MARKER_TABLE = {"mes": "batches", "lims": "lab_results", "cmms": "maintenance_events"}


def unfinished(lake: Lake, files: Sequence[LandedFile]) -> list[LandedFile]:
    log = bronze.read_log(lake)
    status = dict(zip(log["source_file"], log["status"], strict=True)) if log.height else {}
    tl = lake.read("silver", "telemetry_log", ["source_file"])
    tel_done = set(tl["source_file"].to_list()) if tl is not None else set()
    tables = {src: lake.table("silver", name) for src, name in MARKER_TABLE.items()}
    out = []
    for f in files:
        st = status.get(f.rel)
        if st == "quarantined":
            continue
        if st == "accepted":
            if f.source == "telemetry" and f.rel in tel_done:
                continue
            dt = tables.get(f.source)
            if dt is not None and dt.transaction_version(source_app_id(f.rel)) is not None:
                continue
        out.append(f)
    return out
