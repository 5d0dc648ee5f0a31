"""Phases by a tag crossing a value (``PhaseRule.kind == "tag_crossing"``), found as silver
reads the telemetry.

A batch under this rule starts in the rule's first phase (``silver/batches`` writes it);
each later phase begins at the first valid reading of its tag (in the tag's canonical unit)
above or below its value after the previous phase began. Readings are judged in the phase
they fall in, so a crossing is looked for in each delivery before its readings are
prepared: ``crossing_phases`` extends the batch's phases with the crossings the delivery
holds, and ``write_crossings`` records them in ``silver/batch_phases`` (``phase_source`` =
``rule:tag_crossing``), where ``build_batches`` keeps them. Idempotent: a rerun of the same
delivery finds the same crossings (the search starts after the last phase already found).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from ..specs import CppSpec
from ..storage import Lake
from .batches import PHASE_SCHEMA, replace_batches, rule_phases


def crossing_phases(
    raw: pl.DataFrame, spec: CppSpec, batches: pl.DataFrame, phases: pl.DataFrame
) -> tuple[pl.DataFrame, bool]:
    """(phases with the crossings found in ``raw``, one batch's bronze rows; whether any was
    found). Batches with MES phases, or not under a ``tag_crossing`` rule, are unchanged."""
    rule = spec.rule
    if rule.kind != "tag_crossing" or raw.height == 0:
        return phases, False
    bid = raw["batch_id"][0]
    mine = phases.filter(pl.col("batch_id") == bid).sort("start_ts")
    b = batches.filter(pl.col("batch_id") == bid)
    if mine.height == 0 or b.height == 0 or (mine["phase_source"] != rule.name).any():
        return phases, False
    crossed: list[tuple[str, datetime]] = [
        (p, t) for p, t in mine.select("phase", "start_ts").iter_rows()
    ][1:]
    last = mine["start_ts"].max()
    found = False
    for c in rule.crossings[len(crossed) :]:
        if c.tag not in spec.tags:
            break
        r = raw.filter((pl.col("tag") == c.tag) & (pl.col("ts") > last))
        if "quality" in r.columns:
            r = r.filter((pl.col("quality") != "bad").fill_null(True))
        canon = spec.tags[c.tag].uom
        value = pl.col("value")
        for uom in r["uom"].unique().to_list() if "uom" in r.columns else []:
            if uom != canon:
                conv = spec.conversion(c.tag, uom) if uom is not None else None
                scale, offset = conv if conv is not None else (float("nan"), 0.0)
                value = pl.when(pl.col("uom") == uom).then(value * scale + offset).otherwise(value)
        r = r.with_columns(v=value).filter(pl.col("v").is_finite())
        hit = r.filter(pl.col("v") > c.above if c.above is not None else pl.col("v") < c.below)
        if hit.height == 0:
            break
        last = hit["ts"].min()
        assert isinstance(last, datetime)
        crossed.append((c.phase, last))
        found = True
    if not found:
        return phases, False
    start, end = b["start_ts"][0], b["end_ts"][0]
    unit = b["unit_id"][0]
    rows = [
        {
            "batch_id": bid,
            "unit_id": unit,
            "phase": n,
            "start_ts": t0,
            "end_ts": t1,
            "phase_source": rule.name,
        }
        for n, t0, t1 in rule_phases(rule, start, end, crossed)
    ]
    new = pl.DataFrame(rows, schema=PHASE_SCHEMA)
    out = pl.concat([phases.filter(pl.col("batch_id") != bid), new.select(phases.columns)])
    return out, True


def write_crossings(lake: Lake, phases: pl.DataFrame, batch_ids: Sequence[str]) -> None:
    """Record the phases of ``batch_ids`` (with their crossings) in ``silver/batch_phases``."""
    if not batch_ids:
        return
    ids = sorted(set(batch_ids))
    with lake.lock("silver-batches"):
        replace_batches(lake, "batch_phases", phases.filter(pl.col("batch_id").is_in(ids)), ids)
