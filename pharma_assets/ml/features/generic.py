"""Generic per-tag batch features for any unit class (issue 15): what a process engineer
summarises from a batch record, computed from the tags a unit class (and the site's own
tags) declares, whatever they are.

Read from ``silver/batch_timeline`` (every class has it: one row per batch per elapsed
minute, a column per tag, the phase of the minute) and ``silver/batches`` (start, end).
Per tag and per segment (each phase the batch went through, and ``all`` for the whole
batch; a class without phases has the one phase ``batch``):

* ``mean``, ``min``, ``max``, ``std``, ``last``;
* ``slope``: least-squares slope against time (unit per hour);
* ``auc``: area under the curve (unit x hour; each reading held until the next one);
* ``h_above`` / ``h_below``: hours above the NOR high / below the NOR low of the spec in
  force (tags with a NOR only; levels from the spec, never from the data);

and per segment ``<segment>__duration_h`` and ``<segment>__start_h`` (hours after the batch
start). Columns are named ``<tag>__<segment>__<stat>``.

Horizons (``GENERIC_HORIZONS``): ``harvest`` (the whole batch, once it ended) and ``frac50``
(the first half of the batch's expected duration: the median duration of the batches that
ended before it started, so no batch's own length is used to place its cut; a batch with no
earlier completed batch has no ``frac50`` features). A row is ``reached`` when the horizon's
cut lies in the past at ``as_of`` (the scoring time), so running batches are forecast only
from data they already have; no feature reads a reading at or after the cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import polars as pl

from pharma_assets.lake.specs import CppSpec
from pharma_assets.lake.storage import Lake

from .common import hours

#: horizon -> fraction of the expected batch duration (None: the whole batch)
GENERIC_HORIZONS: dict[str, float | None] = {"frac50": 0.5, "harvest": None}
STATS = ("mean", "min", "max", "std", "last", "slope", "auc", "h_above", "h_below")
ALL = "all"
#: timeline columns that are not tags
_KEYS = ("batch_id", "unit_id", "elapsed_min", "minute_ts", "phase", "source_file")


def timeline_tags(timeline: pl.DataFrame | pl.LazyFrame, declared: Sequence[str]) -> list[str]:
    """The numeric tag columns of a timeline among ``declared`` (the class's and the site's
    tags), in declared order, then any other numeric tag column (a site tag the class does
    not list)."""
    schema = timeline.collect_schema()
    numeric = [c for c, t in schema.items() if c not in _KEYS and t.is_numeric()]
    first = [t for t in dict.fromkeys(declared) if t in numeric]
    return first + sorted(set(numeric) - set(first))


def _expected_duration(batches: pl.DataFrame) -> pl.DataFrame:
    """Per batch: median duration (h) of the completed batches that ended before it started."""
    done = batches.filter(pl.col("end_ts").is_not_null()).select(
        pl.col("end_ts").alias("_end"), _dur=hours(pl.col("end_ts") - pl.col("start_ts"))
    )
    return (
        batches.select("batch_id", "start_ts")
        .join(done, how="cross")
        .filter(pl.col("_end") <= pl.col("start_ts"))
        .group_by("batch_id")
        .agg(pl.col("_dur").median().alias("expected_duration_h"))
    )


def _minutes(timeline: pl.DataFrame, tags: Sequence[str]) -> pl.DataFrame:
    """One row per (batch, minute), sorted, with the hours each reading is held (``_dt``)."""
    tl = timeline.select("batch_id", "elapsed_min", "phase", *tags)
    tl = (
        tl.group_by("batch_id", "elapsed_min")
        .agg(pl.col("phase").first(), *[pl.col(t).cast(pl.Float64).mean() for t in tags])
        .sort("batch_id", "elapsed_min")
    )
    step = pl.col("elapsed_min").diff().over("batch_id")
    nxt = (pl.col("elapsed_min").shift(-1).over("batch_id") - pl.col("elapsed_min")) / 60.0
    return tl.with_columns(pl.col(t).fill_nan(None) for t in tags).with_columns(
        _h=pl.col("elapsed_min") / 60.0,
        _dt=nxt.fill_null(step.median().over("batch_id") / 60.0).fill_null(1 / 60).clip(0, 1.0),
    )


def _aggs(tags: Sequence[str], levels: Mapping[str, tuple[float | None, float | None]]) -> list:
    x, dt = pl.col("_h"), pl.col("_dt")
    out: list[pl.Expr] = [
        (x.max() - x.min() + dt.last()).alias("duration_h"),
        x.min().alias("start_h"),
    ]
    for t in tags:
        v = pl.col(t)
        ok = v.is_not_null()
        xs, vs = x.filter(ok), v.filter(ok)
        sxx = ((xs - xs.mean()) ** 2).sum()
        out += [
            v.mean().alias(f"{t}__mean"),
            v.min().alias(f"{t}__min"),
            v.max().alias(f"{t}__max"),
            v.std().alias(f"{t}__std"),
            v.drop_nulls().last().alias(f"{t}__last"),
            pl.when(sxx > 1e-12)
            .then(((xs - xs.mean()) * (vs - vs.mean())).sum() / sxx)
            .alias(f"{t}__slope"),
            pl.when(ok.any()).then((v * dt).sum()).alias(f"{t}__auc"),
        ]
        lo, hi = levels.get(t, (None, None))
        if hi is not None:
            out.append(pl.when(ok.any()).then(dt.filter(v > hi).sum()).alias(f"{t}__h_above"))
        if lo is not None:
            out.append(pl.when(ok.any()).then(dt.filter(v < lo).sum()).alias(f"{t}__h_below"))
    return out


def generic_batch_features(
    timeline: pl.DataFrame,
    batches: pl.DataFrame,
    horizon: str,
    tags: Sequence[str],
    levels: Mapping[str, tuple[float | None, float | None]] | None = None,
    segments: Sequence[str] | None = None,
    as_of: datetime | None = None,
) -> pl.DataFrame:
    """One row per batch at ``horizon`` (see module docstring): ``batch_id, unit_id,
    start_ts, as_of_ts, elapsed_h, expected_duration_h, reached`` and the per-tag, per-segment
    statistics. ``segments``: the phases given columns (default: every phase in the
    timeline), so a batch that has not reached a phase has nulls there rather than a
    different schema."""
    if horizon not in GENERIC_HORIZONS:
        raise ValueError(f"horizon {horizon!r} unknown; use one of {sorted(GENERIC_HORIZONS)}")
    frac = GENERIC_HORIZONS[horizon]
    levels = levels or {}
    tags = [t for t in tags if t in timeline.columns]
    now = pl.lit(as_of, pl.Datetime("us", "UTC")) if as_of is not None else None
    base = batches.select("batch_id", "unit_id", "start_ts", "end_ts").join(
        _expected_duration(batches), on="batch_id", how="left"
    )
    if frac is None:
        cut = pl.col("end_ts")
    else:
        cut = pl.col("start_ts") + pl.duration(
            microseconds=(pl.col("expected_duration_h") * frac * 3.6e9).cast(pl.Int64)
        )
    base = base.with_columns(_cut=cut.cast(pl.Datetime("us", "UTC")))
    reached = pl.col("_cut").is_not_null()
    if now is not None:
        reached = reached & (pl.col("_cut") <= now)
    as_of_ts = pl.col("_cut") if now is None else pl.min_horizontal(pl.col("_cut"), now)
    base = base.with_columns(
        reached=reached.fill_null(False),
        as_of_ts=pl.coalesce(as_of_ts, now) if now is not None else as_of_ts,
    ).with_columns(elapsed_h=hours(pl.col("as_of_ts") - pl.col("start_ts")))
    segs = list(segments) if segments is not None else []
    if segments is None and "phase" in timeline.columns:
        segs = sorted(timeline["phase"].drop_nulls().unique().to_list())
    m = _minutes(timeline, tags).join(
        base.select("batch_id", "start_ts", "as_of_ts"), on="batch_id", how="inner"
    )
    # only readings before the cut (minute start + 1 min <= as_of: the minute is complete)
    m = m.filter(
        pl.col("as_of_ts").is_not_null()
        & (
            pl.col("start_ts") + pl.duration(minutes=pl.col("elapsed_min") + 1)
            <= pl.col("as_of_ts")
        )
    )
    aggs = _aggs(tags, levels)
    out = base.drop("_cut", "end_ts")
    parts = [(ALL, m)] + [(s, m.filter(pl.col("phase") == s)) for s in segs]
    for seg, frame in parts:
        g = frame.group_by("batch_id").agg(aggs)
        ren = {c: _name(c, seg) for c in g.columns if c != "batch_id"}
        out = out.join(g.rename(ren), on="batch_id", how="left")
        for c in ren.values():  # every segment's columns exist (null) even when no row has it
            if c not in out.columns:
                out = out.with_columns(pl.lit(None, pl.Float64).alias(c))
    return out.sort("start_ts", "batch_id")


def _name(col: str, seg: str) -> str:
    if "__" in col:
        tag, stat = col.split("__", 1)
        return f"{tag}__{seg}__{stat}"
    return f"{seg}__{col}"


def generic_feature_columns(df: pl.DataFrame) -> list[str]:
    """The model inputs of a :func:`generic_batch_features` table: the per-tag and per-segment
    statistics, the expected duration and (harvest) the elapsed hours."""
    skip = {"batch_id", "unit_id", "start_ts", "as_of_ts", "reached", "horizon"}
    return [
        c
        for c in df.columns
        if c not in skip and df.schema[c].is_numeric() and not df[c].is_null().all()
    ]


def generic_feature_table(
    lake: Lake, spec: CppSpec, as_of: datetime | None = None, chunk_batches: int = 200
) -> pl.DataFrame:
    """``features/batch_generic``: :func:`generic_batch_features` of every batch of the lake
    at every ``GENERIC_HORIZONS`` horizon (a ``horizon`` column), on the tags of the spec's
    unit class and the site's (``spec`` loaded with the landing zone), time above/below the
    spec's base NOR, one column set per phase of the class (``batch`` without phases).
    Reads ``silver/batch_timeline`` ``chunk_batches`` batches at a time."""
    uc = spec.load_unit_class()
    batches = lake.read("silver", "batches", ["batch_id", "unit_id", "start_ts", "end_ts"])
    tl = lake.scan("silver", "batch_timeline")
    if batches is None or tl is None or batches.height == 0:
        return pl.DataFrame(schema=GENERIC_BASE_SCHEMA)
    tags = timeline_tags(tl, [*uc.tag_names, *spec.tags])
    levels = {
        t: (s.nor[0], s.nor[1]) for t, s in spec.tags.items() if t in tags and s.nor is not None
    }
    segments = list(spec.phase_names)
    ids = sorted(batches["batch_id"].to_list())
    cols = ["batch_id", "elapsed_min", "phase", *tags]
    frames = []
    for i in range(0, len(ids), chunk_batches):
        chunk = ids[i : i + chunk_batches]
        part = lake.read("silver", "batch_timeline", cols, partition=("batch_id", chunk))
        if part is None or part.height == 0:
            continue
        b = batches.filter(pl.col("batch_id").is_in(chunk))
        for h in GENERIC_HORIZONS:
            f = generic_batch_features(part, batches, h, tags, levels, segments, as_of)
            frames.append(
                f.filter(pl.col("batch_id").is_in(b["batch_id"].to_list())).with_columns(
                    horizon=pl.lit(h)
                )
            )
    if not frames:
        return pl.DataFrame(schema=GENERIC_BASE_SCHEMA)
    return pl.concat(frames, how="diagonal_relaxed").sort("horizon", "start_ts", "batch_id")


GENERIC_BASE_SCHEMA: dict[str, pl.DataType] = {
    "batch_id": pl.String(),
    "unit_id": pl.String(),
    "start_ts": pl.Datetime("us", "UTC"),
    "expected_duration_h": pl.Float64(),
    "reached": pl.Boolean(),
    "as_of_ts": pl.Datetime("us", "UTC"),
    "elapsed_h": pl.Float64(),
    "horizon": pl.String(),
}
