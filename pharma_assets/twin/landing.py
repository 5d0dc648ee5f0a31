"""Landing-zone formats: what a historian, MES, LIMS and CMMS export, one folder per source.

Layout (documented in docs/data_model.md)::

    <landing>/telemetry/<unit_id>/<batch_id>/<YYYYmmddTHHMMSSZ>_<seq:05d>.parquet
    <landing>/mes/<unit_id>/<batch_id>/<YYYYmmddTHHMMSSZ>_<seq:05d>.jsonl
    <landing>/lims/<unit_id>/<batch_id>/<YYYYmmddTHHMMSSZ>_<seq:05d>.csv
    <landing>/cmms/<unit_id>/<YYYYmmddTHHMMSSZ>_<seq:05d>.jsonl

The timestamp in a file name is that of its first record, the sequence number counts files
of the same folder, so lexical order is delivery order and the path says where it came
from. Files are written to a hidden temporary name and renamed, so a reader never sees a
half-written file. Ground truth (fault labels, true trajectories) is not a plant system
and goes to a separate folder (`write_ground_truth`).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .plant import FaultLabel, MaintenanceEvent

TELEMETRY_COLUMNS = ("ts", "site_id", "unit_id", "batch_id", "tag", "value", "uom", "quality")
LIMS_COLUMNS = (
    "sample_id",
    "site_id",
    "unit_id",
    "batch_id",
    "sample_ts",
    "sample_type",
    "analyte",
    "value",
    "uom",
)
QUALITY_CODES = ("good", "uncertain", "bad")


def quality_codes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """OPC UA style quality per reading: about 0.05 % uncertain and 0.01 % bad, at random."""
    q = rng.random(shape)
    return np.where(q < 1e-4, 2, np.where(q < 6e-4, 1, 0)).astype(np.int8)


def stamp(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _atomic(path: Path, write: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def chunk_path(
    root: Path,
    source: str,
    unit_id: str,
    batch_id: str | None,
    first_ts: datetime,
    seq: int,
    ext: str,
) -> Path:
    parts = [source, unit_id] + ([batch_id] if batch_id else [])
    return Path(root).joinpath(*parts) / f"{stamp(first_ts)}_{seq:05d}.{ext}"


def write_telemetry_chunk(
    path: Path,
    ts_us: np.ndarray,
    site_id: str,
    unit_id: str,
    batch_id: str,
    tags: Sequence[str],
    uoms: Sequence[str],
    values: np.ndarray,
    quality: np.ndarray,
    mask: np.ndarray | None = None,
) -> Path:
    """Write one long (historian-style) chunk.

    ``values`` and ``quality`` (codes into QUALITY_CODES) are (steps, tags) arrays aligned
    with ``ts_us`` (microseconds since epoch, UTC); rows are ordered by time then tag.
    ``mask`` (same shape) keeps only the samples a tag's sampling period produces.
    """
    n_t, n_tags = values.shape
    tag_idx = np.tile(np.arange(n_tags, dtype=np.int32), n_t)
    ts_all = np.repeat(ts_us, n_tags)
    values, quality = values.ravel(), quality.ravel()
    if mask is not None:
        keep = mask.ravel()
        tag_idx, ts_all, values, quality = tag_idx[keep], ts_all[keep], values[keep], quality[keep]
    const = np.zeros(len(values), dtype=np.int32)
    table = pa.table(
        {
            "ts": pa.array(ts_all, type=pa.timestamp("us", tz="UTC")),
            "site_id": pa.DictionaryArray.from_arrays(const, pa.array([site_id])),
            "unit_id": pa.DictionaryArray.from_arrays(const, pa.array([unit_id])),
            "batch_id": pa.DictionaryArray.from_arrays(const, pa.array([batch_id])),
            "tag": pa.DictionaryArray.from_arrays(tag_idx, pa.array(list(tags))),
            "value": pa.array(values.astype(np.float64)),
            "uom": pa.DictionaryArray.from_arrays(tag_idx, pa.array(list(uoms))),
            "quality": pa.DictionaryArray.from_arrays(
                quality.astype(np.int32), pa.array(QUALITY_CODES)
            ),
        }
    )
    return _atomic(path, lambda p: pq.write_table(table, p, compression="zstd"))


def _json_default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot serialise {type(o)}")


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    def w(p: Path) -> None:
        with open(p, "w") as f:
            for r in records:
                f.write(json.dumps(r, default=_json_default, sort_keys=False) + "\n")

    return _atomic(path, w)


def write_lims_csv(path: Path, rows: Iterable[Sequence[Any]]) -> Path:
    def w(p: Path) -> None:
        with open(p, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(LIMS_COLUMNS)
            for r in rows:
                wr.writerow([_json_default(x) if isinstance(x, datetime) else x for x in r])

    return _atomic(path, w)


def maintenance_record(e: MaintenanceEvent) -> dict[str, Any]:
    return asdict(e)


def write_fault_labels(path: Path, labels: list[FaultLabel]) -> Path:
    """Fault labels (ground truth) as Parquet; an empty list writes an empty table."""
    lab = pa.Table.from_pylist(
        [asdict(x) for x in labels],
        schema=pa.schema(
            [
                ("fault_id", pa.string()),
                ("fault_type", pa.string()),
                ("site_id", pa.string()),
                ("unit_id", pa.string()),
                ("batch_id", pa.string()),
                ("equipment_id", pa.string()),
                ("onset_ts", pa.timestamp("us", tz="UTC")),
                ("end_ts", pa.timestamp("us", tz="UTC")),
                ("is_equipment_failure", pa.bool_()),
                ("detail", pa.string()),
            ]
        ),
    )
    return _atomic(Path(path), lambda p: pq.write_table(lab, p))


def write_ground_truth(
    root: Path,
    labels: list[FaultLabel],
    batches: list[dict[str, Any]],
    trajectories: pa.Table | None = None,
) -> None:
    """Fault labels, per-batch truth and hourly true trajectories (for scoring models)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_fault_labels(root / "fault_labels.parquet", labels)
    if batches:
        _atomic(
            root / "batches.parquet", lambda p: pq.write_table(pa.Table.from_pylist(batches), p)
        )
    if trajectories is not None:
        _atomic(
            root / "true_trajectories_hourly.parquet", lambda p: pq.write_table(trajectories, p)
        )
