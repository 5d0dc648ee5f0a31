"""What the plant recorded about one batch up to an as-of time, in the form calibration reads.

Two sources fill the same `BatchObservations`: the lake (`from_lake`: silver/batches,
silver/lab_results and the minute timeline silver/batch_timeline) and a simulated cohort
(`from_engine`, for tests and back-tests: the same LIMS assay error and telemetry signal
models as the landing zone, without the round trip through files). Calibration never sees
anything after ``as_of_h``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from pharma_assets.lake.storage import Lake
from pharma_assets.twin.engine import BatchInputs
from pharma_assets.twin.outputs import lab_samples, telemetry_signals

VCD, VIABILITY, TITER = "viable_cell_density_e6_cells_ml", "viability_pct", "titer_g_l"
REQUIRED_ANALYTES = (VCD, VIABILITY, TITER)
REQUIRED_TAGS = ("volume_l", "feed_rate_ml_h")
OPTIONAL_TAGS = ("capacitance_pf_cm",)


class CalibrationDataError(ValueError):
    """The batch lacks data calibration needs (the message lists what is missing)."""


@dataclass
class BatchObservations:
    """LIMS results and hourly online signals of one batch, elapsed hours from inoculation.

    ``lims`` maps an in-process analyte to (sample hours, values). ``hourly`` maps a tag to
    one value per elapsed hour 0, 1, ... (the mean of the hour's readings; NaN where none);
    ``feed_rate_ml_h`` is the delivered feed. ``tags`` lists the tags the source delivered
    at all, so a missing tag is told apart from an hour without readings.
    """

    batch_id: str
    recipe_id: str
    as_of_h: float
    planned_end_h: float
    lims: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    hourly: dict[str, np.ndarray] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()
    end_h: float | None = None  # actual end, when the batch ended before as_of
    shift_h: float | None = None  # start of the production phase (temperature shift), if seen
    start: datetime | None = None  # inoculation (UTC)
    lots: dict[str, str] = field(default_factory=dict)  # media_lot, feed_lot, ... (MES)

    def until(self, as_of_h: float) -> BatchObservations:
        """The same batch as it was known at ``as_of_h`` (nothing later)."""
        if as_of_h > self.as_of_h + 1e-9:
            raise ValueError(f"as-of {as_of_h} h is after the data's own as-of {self.as_of_h} h")
        lims = {a: (t[t <= as_of_h], v[t <= as_of_h]) for a, (t, v) in self.lims.items() if len(t)}
        hours = math.floor(as_of_h)
        return replace(
            self,
            as_of_h=as_of_h,
            lims={a: tv for a, tv in lims.items() if len(tv[0])},
            hourly={k: v[:hours] for k, v in self.hourly.items()},
            end_h=self.end_h if self.end_h is not None and self.end_h <= as_of_h else None,
            shift_h=self.shift_h if self.shift_h is not None and self.shift_h <= as_of_h else None,
        )

    def missing(self) -> list[str]:
        """Required tags the source never delivered and required analytes absent from LIMS
        samples that exist (a batch without any sample yet is 'too early', not 'missing')."""
        out = [f"tag {t}" for t in REQUIRED_TAGS if t not in self.tags]
        if self.lims:
            out += [f"LIMS analyte {a}" for a in REQUIRED_ANALYTES if a not in self.lims]
        return out


def from_engine(
    rec: dict[str, np.ndarray],
    inputs: BatchInputs,
    dt_h: float,
    batch_ids: list[str],
    recipe_ids: list[str],
    seed: int = 0,
    starts: list[datetime] | None = None,
    lots: list[dict[str, str]] | None = None,
    lims_seed: int | None = None,
) -> list[BatchObservations]:
    """Observations of every batch of a simulated cohort, complete up to each batch's end.

    LIMS samples are drawn daily (15 min after each 24 h mark, value of the 24 h step, as
    `twin.history` writes them) with the assay error of `twin.outputs.lab_samples`; online
    tags are the minute signals of `twin.outputs.telemetry_signals` averaged per hour.
    With ``lims_seed`` each batch's LIMS results draw their assay error from their own
    stream (``[lims_seed, batch]``), so a sample keeps its value when the record grows (an
    evaluation that observes a running batch again every hour needs that).
    """
    rng = np.random.default_rng(seed)
    n_steps = rec["Xv"].shape[0]
    sig = telemetry_signals(rec, inputs, dt_h, 0, rng)
    per_h = round(1 / dt_h)
    spd = round(24 / dt_h)
    out = []
    for b, (bid, rid) in enumerate(zip(batch_ids, recipe_ids, strict=True)):
        end_k = min(math.ceil(float(inputs.end_h[b]) / dt_h), n_steps)
        lims: dict[str, tuple[list[float], list[float]]] = {}
        r_lims = rng if lims_seed is None else np.random.default_rng([lims_seed, b])
        for k in range(0, end_k, spd):
            for analyte, value, _ in lab_samples(rec, k, b, r_lims):
                ts, vs = lims.setdefault(analyte, ([], []))
                ts.append(k * dt_h + 0.25)
                vs.append(value)
        hours = end_k // per_h
        hourly = {
            tag: sig[tag][: hours * per_h, b].reshape(hours, per_h).mean(axis=1)
            for tag in (*REQUIRED_TAGS, *OPTIONAL_TAGS)
        }
        end_h = end_k * dt_h
        out.append(
            BatchObservations(
                batch_id=bid,
                recipe_id=rid,
                as_of_h=end_h,
                planned_end_h=float(inputs.end_h[b]),
                lims={a: (np.array(t), np.array(v)) for a, (t, v) in lims.items()},
                hourly=hourly,
                tags=frozenset(hourly),
                end_h=end_h,
                shift_h=float(inputs.shift_h[b]) if inputs.shift_h[b] <= end_h else None,
                start=starts[b] if starts else None,
                lots=dict(lots[b]) if lots else {},
            )
        )
    return out


def from_lake(
    lake: Lake, batch_id: str, as_of: datetime | None = None, as_of_h: float | None = None
) -> BatchObservations:
    """Read one batch from the lake, keeping only what was known at ``as_of``.

    ``as_of`` (or ``as_of_h``, hours after inoculation) defaults to the batch end (complete
    or aborted) or, for a running batch, its latest telemetry minute.
    """
    batches = lake.read("silver", "batches", filter_expr=pl.col("batch_id") == batch_id)
    if batches is None or batches.is_empty():
        raise CalibrationDataError(f"batch {batch_id!r} is not in silver/batches")
    b = batches.row(0, named=True)
    start: datetime = b["start_ts"]
    end_ts: datetime | None = b.get("end_ts")
    if as_of_h is not None:
        if as_of_h < 0:
            raise ValueError(f"as-of {as_of_h} h is before the inoculation of {batch_id}")
        as_of = start + timedelta(hours=as_of_h)
    timeline = lake.read(
        "silver",
        "batch_timeline",
        filter_expr=pl.col("batch_id") == batch_id,
    )
    if as_of is None:
        if end_ts is not None:
            as_of = end_ts
        elif timeline is not None and not timeline.is_empty():
            as_of = timeline["minute_ts"].max()  # type: ignore[assignment]
        else:
            as_of = start
    assert as_of is not None
    as_of_h = max((as_of - start).total_seconds() / 3600.0, 0.0)
    planned = b.get("planned_end_ts")
    planned_end_h = (planned - start).total_seconds() / 3600.0 if planned is not None else math.nan

    lims: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    labs = lake.read(
        "silver",
        "lab_results",
        columns=["sample_ts", "sample_type", "analyte", "value"],
        filter_expr=(pl.col("batch_id") == batch_id)
        & (pl.col("sample_type") == "in_process")
        & (pl.col("sample_ts") <= as_of),
    )
    if labs is not None:
        for (analyte,), g in labs.sort("sample_ts").group_by(["analyte"], maintain_order=True):
            t = ((g["sample_ts"] - start).dt.total_microseconds() / 3.6e9).to_numpy()
            lims[str(analyte)] = (t.astype(float), g["value"].to_numpy().astype(float))

    hours = math.floor(as_of_h)
    hourly: dict[str, np.ndarray] = {}
    tags: set[str] = set()
    if timeline is not None and not timeline.is_empty():
        wanted = [c for c in (*REQUIRED_TAGS, *OPTIONAL_TAGS) if c in timeline.columns]
        tl = (
            timeline.filter(pl.col("elapsed_min") < hours * 60)
            .group_by(hour=pl.col("elapsed_min") // 60)
            .agg([pl.col(c).mean() for c in wanted])
        )
        hour_idx = tl["hour"].to_numpy()
        keep = (hour_idx >= 0) & (hour_idx < hours)
        for tag in wanted:
            if timeline[tag].null_count() < timeline.height:
                tags.add(tag)
            arr = np.full(hours, np.nan)
            vals = tl[tag].cast(pl.Float64).fill_null(np.nan).to_numpy()
            arr[hour_idx[keep]] = vals[keep]
            hourly[tag] = arr
    end_h = None
    if end_ts is not None and end_ts <= as_of:
        end_h = (end_ts - start).total_seconds() / 3600.0
    shift_h = None
    phases = lake.read(
        "silver",
        "batch_phases",
        filter_expr=(pl.col("batch_id") == batch_id) & (pl.col("phase") == "production"),
    )
    if phases is not None and not phases.is_empty():
        shift_ts: datetime = phases["start_ts"].min()  # type: ignore[assignment]
        if shift_ts <= as_of:
            shift_h = (shift_ts - start).total_seconds() / 3600.0
    return BatchObservations(
        batch_id=batch_id,
        recipe_id=str(b["recipe_id"]),
        as_of_h=as_of_h,
        planned_end_h=planned_end_h,
        lims=lims,
        hourly=hourly,
        tags=frozenset(tags),
        end_h=end_h,
        shift_h=shift_h,
        start=start,
        lots={k: str(b[k]) for k in ("media_lot", "feed_lot") if b.get(k) is not None},
    )
