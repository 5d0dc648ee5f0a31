"""Silver batches, phases and event quarantine, rebuilt from bronze MES events."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from pharma_assets.process.vocabulary import PHASES

from .. import bronze
from ..input_rules import raw_reason
from ..specs import ONE_PHASE, CppSpec, PhaseRule
from ..storage import UTC_US, Lake
from .common import LAYER, MES_EVENT_TYPES

BATCH_SCHEMA = {
    "batch_id": pl.String(),
    "site_id": pl.String(),
    "unit_id": pl.String(),
    "product": pl.String(),
    "recipe_id": pl.String(),
    "recipe_version": pl.Int64(),
    "start_ts": UTC_US,
    "planned_end_ts": UTC_US,
    "end_ts": UTC_US,
    "status": pl.String(),
    "end_reason": pl.String(),
    "media_lot": pl.String(),
    "feed_lot": pl.String(),
    "inoculum_lot": pl.String(),
    "base_lot": pl.String(),
    "material_lots": pl.String(),
    "operator": pl.String(),
    "current_phase": pl.String(),
    "current_phase_start": UTC_US,
}
PHASE_SCHEMA = {
    "batch_id": pl.String(),
    "unit_id": pl.String(),
    "phase": pl.String(),
    "start_ts": UTC_US,
    "end_ts": UTC_US,
    "phase_source": pl.String(),
}
PHASE_RULE_DEFAULT = PhaseRule()  # one phase per batch

EVENT_Q_SCHEMA = {
    "event_id": pl.String(),
    "batch_id": pl.String(),
    "event_type": pl.String(),
    "source_file": pl.String(),
    "reason": pl.String(),
    "detail": pl.String(),
}


def derive_batches(
    mes: pl.DataFrame,
    phase_rule: PhaseRule | None = None,
    phase_names: Sequence[str] = PHASES,
    crossed: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(batches, batch_phases, event_quarantine) from bronze MES rows.

    Phases come from the MES ``phase_start`` events (``phase_source`` = ``mes``; a phase
    not among ``phase_names``, the unit class's, is quarantined ``unknown_phase``); a batch
    with none gets the phases of the ``phase_rule`` (``phase_source`` = the rule, e.g.
    ``rule:one_phase``), so its CPPs are judged and its Cpk computed. Under a
    ``tag_crossing`` rule, ``crossed`` holds the crossings silver telemetry has found so far
    (``batch_phases`` rows of that rule, ``phase_rules.crossing_phases``): they are kept."""
    rule = phase_rule or PhaseRule()
    names = tuple(phase_names)
    quarantine: list[dict[str, Any]] = []
    seen: set[str] = set()
    per_batch: dict[str, list[dict[str, Any]]] = {}
    for r in mes.sort("event_ts", "ingested_at", nulls_last=True).iter_rows(named=True):

        def bad(reason: str, detail: str, r: dict[str, Any] = r) -> None:
            quarantine.append(
                {
                    "event_id": r["event_id"],
                    "batch_id": r["batch_id"],
                    "event_type": r["event_type"],
                    "source_file": r["source_file"],
                    "reason": reason,
                    "detail": detail,
                }
            )

        if r.get("raw"):
            bad(raw_reason(r["raw"]) or "type_error", r["raw"])
        elif r["event_type"] not in MES_EVENT_TYPES:
            bad("unknown_event_type", f"{r['event_type']!r} is not one of {MES_EVENT_TYPES}")
        elif r["event_id"] in seen:
            bad("duplicate_event", f"event {r['event_id']} already recorded")
        elif r["event_ts"] is None or r["batch_id"] is None:
            bad("missing_field", "event_ts and batch_id are required")
        else:
            payload = json.loads(r["payload"]) if r.get("payload") else {}
            if r["event_type"] == "phase_start" and payload.get("phase") not in names:
                bad("unknown_phase", f"phase {payload.get('phase')!r} is not one of {names}")
                continue
            seen.add(r["event_id"])
            per_batch.setdefault(r["batch_id"], []).append({**r, "payload": payload})
    batches, phases = [], []
    for bid, evs in per_batch.items():
        start = next((e for e in evs if e["event_type"] == "batch_start"), None)
        if start is None:
            for e in evs:
                quarantine.append(
                    {
                        "event_id": e["event_id"],
                        "batch_id": bid,
                        "event_type": e["event_type"],
                        "source_file": e["source_file"],
                        "reason": "no_batch_start",
                        "detail": "no batch_start event has landed for this batch",
                    }
                )
            continue
        for e in evs:  # a second batch_start of the batch is quarantined, never ignored
            if e["event_type"] == "batch_start" and e is not start:
                quarantine.append(
                    {
                        "event_id": e["event_id"],
                        "batch_id": bid,
                        "event_type": e["event_type"],
                        "source_file": e["source_file"],
                        "reason": "duplicate_batch_start",
                        "detail": f"batch already started by {start['event_id']} at "
                        f"{start['event_ts']:%Y-%m-%dT%H:%M:%S}Z",
                    }
                )
        end = next((e for e in evs if e["event_type"] == "batch_end"), None)
        p = start["payload"]
        lots = p.get("material_lots") or {}
        ph = sorted(
            (e for e in evs if e["event_type"] == "phase_start"), key=lambda e: e["event_ts"]
        )
        for i, e in enumerate(ph):
            nxt = ph[i + 1]["event_ts"] if i + 1 < len(ph) else (end["event_ts"] if end else None)
            phases.append(
                {
                    "batch_id": bid,
                    "unit_id": start["unit_id"],
                    "phase": e["payload"]["phase"],
                    "start_ts": e["event_ts"],
                    "end_ts": nxt,
                    "phase_source": "mes",
                }
            )
        ruled = (
            []
            if ph
            else rule_phases(
                rule, start["event_ts"], end["event_ts"] if end else None, _crossed(crossed, bid)
            )
        )
        for name, t0, t1 in ruled:
            phases.append(
                {
                    "batch_id": bid,
                    "unit_id": start["unit_id"],
                    "phase": name,
                    "start_ts": t0,
                    "end_ts": t1,
                    "phase_source": rule.name,
                }
            )
        batches.append(
            {
                "batch_id": bid,
                "site_id": start["site_id"],
                "unit_id": start["unit_id"],
                "product": p.get("product"),
                "recipe_id": p.get("recipe_id"),
                "recipe_version": p.get("recipe_version"),
                "start_ts": start["event_ts"],
                "planned_end_ts": _parse_ts(p.get("planned_end_ts")),
                "end_ts": end["event_ts"] if end else None,
                "status": (end["payload"].get("status") or "complete") if end else "running",
                "end_reason": end["payload"].get("reason") if end else None,
                "media_lot": lots.get("media_lot"),
                "feed_lot": lots.get("feed_lot"),
                "inoculum_lot": lots.get("inoculum_lot"),
                "base_lot": lots.get("base_lot"),
                "material_lots": json.dumps(lots, sort_keys=True),
                "operator": p.get("operator"),
                "current_phase": ph[-1]["payload"]["phase"]
                if ph
                else (ruled[-1][0] if ruled else None),
                "current_phase_start": ph[-1]["event_ts"]
                if ph
                else (ruled[-1][1] if ruled else None),
            }
        )
    return (
        pl.DataFrame(batches, schema=BATCH_SCHEMA).sort("start_ts"),
        pl.DataFrame(phases, schema=PHASE_SCHEMA).sort("batch_id", "start_ts"),
        pl.DataFrame(quarantine, schema=EVENT_Q_SCHEMA),
    )


def _crossed(crossed: pl.DataFrame | None, batch_id: str) -> list[tuple[str, datetime]]:
    if crossed is None or crossed.height == 0:
        return []
    rows = crossed.filter(pl.col("batch_id") == batch_id).sort("start_ts")
    return [(p, t) for p, t in rows.select("phase", "start_ts").iter_rows()]


def rule_phases(
    rule: PhaseRule,
    start: datetime,
    end: datetime | None,
    crossed: list[tuple[str, datetime]] | None = None,
) -> list[tuple[str, datetime, datetime | None]]:
    """(phase, start, end) of a batch without MES phase events, by the spec's phase rule
    (``crossed``: the tag crossings found so far, for a ``tag_crossing`` rule)."""
    if rule.kind == "none":
        return []
    if rule.kind == "one_phase":
        return [(ONE_PHASE, start, end)]
    out: list[tuple[str, datetime, datetime | None]] = []
    if rule.kind == "tag_crossing":
        assert rule.first_phase is not None
        # the first phase from the start, then the crossings found so far in rule order
        out.append((rule.first_phase, start, None))
        wanted = [c.phase for c in rule.crossings]
        for name, t0 in crossed or []:
            if name in wanted and (end is None or t0 < end):
                out.append((name, t0, None))
        return [
            (n, t0, out[i + 1][1] if i + 1 < len(out) else end) for i, (n, t0, _) in enumerate(out)
        ]
    for name, h in sorted(rule.starts_h.items(), key=lambda kv: kv[1]):
        t0 = start + timedelta(hours=h)
        if end is not None and t0 >= end:
            break
        out.append((name, t0, None))
    return [(n, t0, out[i + 1][1] if i + 1 < len(out) else end) for i, (n, t0, _) in enumerate(out)]


def _parse_ts(v: Any) -> datetime | None:
    if not v:
        return None
    try:
        return datetime.fromisoformat(str(v).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def _in(col: str, values: Sequence[str]) -> str:
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{col} IN ({quoted})"


def replace_batches(
    lake: Lake,
    name: str,
    df: pl.DataFrame,
    batch_ids: Sequence[str] | None,
    sources: Sequence[str] = (),
) -> None:
    """Overwrite the rows of these batches (all rows when batch_ids is None)."""
    pred = None if batch_ids is None else _in("batch_id", batch_ids)
    lake.overwrite(LAYER, name, df, predicate=pred, source_files=sources)


def build_batches(
    lake: Lake, batch_ids: Sequence[str] | None = None, spec: CppSpec | None = None
) -> dict[str, int]:
    """Rebuild the batches (all, or only ``batch_ids``) from their bronze MES events; phases
    by MES, else by the spec's phase rule, with the class's phase names (``spec``: the
    spec in force; None: the built-in bioreactor's one-phase rule)."""
    where = None if batch_ids is None else pl.col("batch_id").is_in(list(batch_ids))
    mes = lake.read(bronze.LAYER, "mes", filter_expr=where)
    if mes is None:
        return {"batches": 0, "events_quarantined": 0}
    rule = spec.rule if spec is not None else PHASE_RULE_DEFAULT
    names = spec.phase_names if spec is not None else PHASES
    with lake.lock("silver-batches"):
        crossed = None
        if rule.kind == "tag_crossing":  # keep the crossings silver telemetry recorded
            old = lake.read(LAYER, "batch_phases", filter_expr=where)
            if old is not None:
                crossed = old.filter(pl.col("phase_source") == rule.name)
        batches, phases, q = derive_batches(mes, rule, names, crossed)
        # the batches table carries the markers of the MES files it reflects
        files = sorted(set(mes["source_file"].to_list()))
        replace_batches(lake, "batches", batches, batch_ids, files)
        replace_batches(lake, "batch_phases", phases, batch_ids)
        replace_batches(lake, "event_quarantine", q, batch_ids)
    counts = Counter(batches["status"].to_list())
    return {
        "batches": batches.height,
        "events_in": mes.height,
        "events_quarantined": q.height,
        **{f"status_{k}": v for k, v in counts.items()},
    }
