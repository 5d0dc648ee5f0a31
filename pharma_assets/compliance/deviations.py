"""Deviations and CAPA: opened automatically from process events or by hand, closed by QA.

Why: GMP requires that every departure from the approved process is recorded, investigated,
given a corrective/preventive action (CAPA) and closed by the quality unit before the batch
can be released. States: ``open -> investigation -> capa -> closed``; each step is a new
version of the deviation's row in ``<lake>/gxp/deviations`` (append-only, nothing is
overwritten) and an audit entry with the old and new state and the reason. Closing needs the
``deviation.close`` permission (QA) and an electronic signature over the deviation's content.

Automatic sources: ``gold/cpp_excursions`` with severity major or critical, and contamination
alarms in ``gold/contamination_risk`` (columns batch_id, unit_id, window_end_ts, alarm, risk)
when that table exists: the first window with a *confirmed* alarm (``confirmed_alarm``, the
model's persistence rule, ``ml/alarm_rules.py``) of each batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import polars as pl

from pharma_assets.lake.storage import UTC_US, Lake

from . import GXP_LAYER
from .audit import GXP_TABLE_CONFIGURATION, AuditEvent, AuditTrail
from .signatures import sign
from .users import get_user, require

TABLE = "deviations"
STATES = ("open", "investigation", "capa", "closed")
NEXT = {"open": "investigation", "investigation": "capa", "capa": "closed"}
AUTO_SEVERITIES = ("major", "critical")
SYSTEM = "system"

SCHEMA: dict[str, pl.DataType] = {
    "deviation_id": pl.String(),
    "version": pl.Int64(),
    "batch_id": pl.String(),
    "unit_id": pl.String(),
    "source": pl.String(),
    "source_ref": pl.String(),
    "severity": pl.String(),
    "title": pl.String(),
    "description": pl.String(),
    "state": pl.String(),
    "investigation": pl.String(),
    "root_cause": pl.String(),
    "capa": pl.String(),
    "opened_by": pl.String(),
    "opened_at": UTC_US,
    "updated_by": pl.String(),
    "updated_at": UTC_US,
    "reason": pl.String(),
    "signature_id": pl.String(),
}


@dataclass(frozen=True)
class Deviation:
    deviation_id: str
    version: int
    batch_id: str | None
    unit_id: str | None
    source: str
    source_ref: str | None
    severity: str
    title: str
    description: str
    state: str
    investigation: str | None
    root_cause: str | None
    capa: str | None
    opened_by: str
    opened_at: datetime
    updated_by: str
    updated_at: datetime
    reason: str | None
    signature_id: str | None

    def signed_content(self) -> dict[str, Any]:
        """What QA signs when closing: everything but the bookkeeping of this version."""
        d = asdict(self)
        for k in ("version", "updated_by", "updated_at", "reason", "signature_id", "state"):
            d.pop(k)
        return d


def _versions(lake: Lake) -> pl.DataFrame:
    df = lake.read(GXP_LAYER, TABLE)
    return df if df is not None else pl.DataFrame(schema=SCHEMA)


def list_deviations(
    lake: Lake, batch_id: str | None = None, state: str | None = None
) -> pl.DataFrame:
    """Current version of every deviation (optionally of one batch / in one state)."""
    df = _versions(lake).sort("version").group_by("deviation_id", maintain_order=True).last()
    if batch_id is not None:
        df = df.filter(pl.col("batch_id") == batch_id)
    if state is not None:
        df = df.filter(pl.col("state") == state)
    return df.sort("deviation_id")


def history(lake: Lake, deviation_id: str) -> pl.DataFrame:
    return _versions(lake).filter(pl.col("deviation_id") == deviation_id).sort("version")


def get_deviation(lake: Lake, deviation_id: str) -> Deviation:
    h = history(lake, deviation_id)
    if h.height == 0:
        raise ValueError(f"deviation {deviation_id!r} does not exist (see `deviation list`)")
    return Deviation(**h.row(-1, named=True))


def _write(lake: Lake, rows: list[Deviation]) -> None:
    if rows:
        df = pl.DataFrame([asdict(r) for r in rows], schema=SCHEMA)
        lake.append(GXP_LAYER, TABLE, df, configuration=GXP_TABLE_CONFIGURATION)


def _check_actor(lake: Lake, actor_id: str, permission: str) -> None:
    if actor_id == SYSTEM:
        return
    u = get_user(lake, actor_id)
    if u is None:
        raise ValueError(f"user {actor_id!r} does not exist")
    require(u, permission)


def _next_ids(lake: Lake, n: int) -> list[str]:
    ids = _versions(lake)["deviation_id"].unique().to_list()
    last = max((int(i.split("-")[1]) for i in ids), default=0)
    return [f"DEV-{last + k + 1:05d}" for k in range(n)]


def _open_many(
    lake: Lake,
    actor_id: str,
    specs: list[dict[str, Any]],
    reason: str,
    context_id: str | None = None,
) -> list[Deviation]:
    trail = AuditTrail(lake)
    with lake.lock("gxp_deviations"):
        lake.forget()
        existing = set(_versions(lake)["source_ref"].drop_nulls().to_list())
        specs = [s for s in specs if s.get("source_ref") is None or s["source_ref"] not in existing]
        now = datetime.now(UTC)
        devs = [
            Deviation(
                deviation_id=i,
                version=0,
                batch_id=s.get("batch_id"),
                unit_id=s.get("unit_id"),
                source=s["source"],
                source_ref=s.get("source_ref"),
                severity=s["severity"],
                title=s["title"],
                description=s["description"],
                state="open",
                investigation=None,
                root_cause=None,
                capa=None,
                opened_by=actor_id,
                opened_at=now,
                updated_by=actor_id,
                updated_at=now,
                reason=reason,
                signature_id=None,
            )
            for i, s in zip(_next_ids(lake, len(specs)), specs, strict=True)
        ]
        _write(lake, devs)
    trail.append(
        [
            AuditEvent(
                "deviation_opened",
                actor_id,
                f"{GXP_LAYER}/{TABLE}",
                d.deviation_id,
                "state",
                None,
                "open",
                reason,
                context_id,
            )
            for d in devs
        ]
    )
    return devs


def open_deviation(
    lake: Lake,
    actor_id: str,
    title: str,
    description: str,
    severity: str,
    reason: str,
    batch_id: str | None = None,
    unit_id: str | None = None,
    context_id: str | None = None,
) -> Deviation:
    """Open a deviation by hand (any role with ``deviation.open``)."""
    if severity not in ("minor", "major", "critical"):
        raise ValueError(f"severity {severity!r} must be minor, major or critical")
    if not title.strip():
        raise ValueError("a deviation needs a title")
    _check_actor(lake, actor_id, "deviation.open")
    spec = {
        "batch_id": batch_id,
        "unit_id": unit_id,
        "source": "manual",
        "source_ref": None,
        "severity": severity,
        "title": title,
        "description": description,
    }
    return _open_many(lake, actor_id, [spec], reason, context_id)[0]


ALARM_EVENTS = "alarm_events"  # gxp/alarm_events, written by the gateway's live alarms


def alarm_deviation_windows(lake: Lake) -> pl.DataFrame:
    """Excursion windows a live CPP alarm already opened a deviation for (batch_id, unit_id,
    tag, from_ts, to_ts; to_ts null while the alarm is active), from ``gxp/alarm_events``:
    the batch job does not open a second deviation when gold later shows the same
    excursion (one that overlaps the window)."""
    schema = {
        "batch_id": pl.String(),
        "unit_id": pl.String(),
        "tag": pl.String(),
        "from_ts": UTC_US,
        "to_ts": UTC_US,
    }
    cols = ["alarm_id", "batch_id", "unit_id", "tag", "activated_ts", "cleared_ts", "deviation_id"]
    ev = lake.read(GXP_LAYER, ALARM_EVENTS, cols)
    if ev is None:
        return pl.DataFrame(schema=schema)
    w = ev.group_by("alarm_id").agg(
        pl.col("batch_id", "unit_id", "tag").first(),
        from_ts=pl.col("activated_ts").min(),
        to_ts=pl.col("cleared_ts").max(),
        linked=pl.col("deviation_id").is_not_null().any(),
    )
    return w.filter("linked").select(list(schema)).cast(schema)  # type: ignore[arg-type]


def _covered_by_alarm(ex: pl.DataFrame, windows: pl.DataFrame) -> pl.DataFrame:
    """Excursion ids of ``ex`` that overlap a window of ``alarm_deviation_windows``."""
    if windows.height == 0 or ex.height == 0:
        return ex.select("excursion_id").clear()
    j = ex.join(windows, on=["batch_id", "unit_id", "tag"], how="inner")
    over = (pl.col("start_ts") <= pl.col("to_ts").fill_null(pl.col("end_ts"))) & (
        pl.col("end_ts") >= pl.col("from_ts")
    )
    return j.filter(over).select("excursion_id").unique()


def open_for_alarm(lake: Lake, alarm: dict[str, Any], context_id: str | None = None) -> Deviation:
    """The deviation of a live CPP alarm (``alarms.Alarm.as_dict()``): opened once, keyed by
    the alarm id (a second call returns the first deviation)."""
    for d in (
        list_deviations(lake)
        .filter(pl.col("source_ref") == alarm["alarm_id"])
        .iter_rows(named=True)
    ):
        return Deviation(**d)
    spec = {
        "batch_id": alarm["batch_id"],
        "unit_id": alarm["unit_id"],
        "source": "cpp_alarm",
        "source_ref": alarm["alarm_id"],
        "severity": alarm["severity"],
        "title": f"{alarm['severity']} {alarm['direction']} alarm of {alarm['tag']} ({alarm['phase']})",
        "description": (
            f"live alarm {alarm['alarm_id']}: {alarm['tag']} outside its "
            f"{'PAR' if alarm['level'] >= 2 else 'NOR'} [{alarm['par_lo']}, {alarm['par_hi']}] "
            f"(value {alarm['value']:.4g}, since "
            f"{datetime.fromtimestamp(alarm['activated_ts_us'] / 1e6, UTC):%Y-%m-%d %H:%M:%S} UTC)"
        ),
    }
    opened = _open_many(lake, SYSTEM, [spec], "automatic: live CPP alarm", context_id)
    if opened:
        return opened[0]
    return get_deviation(  # opened by a concurrent caller between the check and the lock
        lake,
        list_deviations(lake).filter(pl.col("source_ref") == alarm["alarm_id"])["deviation_id"][0],
    )


def auto_open(lake: Lake, context_id: str | None = None) -> list[Deviation]:
    """Open a deviation for every major/critical CPP excursion and every batch with a
    contamination alarm that has none yet (idempotent: keyed by the source record).
    Excursions of a batch and tag whose live alarm already opened a deviation are skipped
    (``alarm_deviation_windows``)."""
    specs: list[dict[str, Any]] = []
    ex = lake.read("gold", "cpp_excursions")
    if ex is not None:
        ex = ex.filter(pl.col("severity").is_in(AUTO_SEVERITIES))
        ex = ex.join(
            _covered_by_alarm(ex, alarm_deviation_windows(lake)), on="excursion_id", how="anti"
        )
        for r in ex.iter_rows(named=True):
            specs.append(
                {
                    "batch_id": r["batch_id"],
                    "unit_id": r["unit_id"],
                    "source": "cpp_excursion",
                    "source_ref": r["excursion_id"],
                    "severity": r["severity"],
                    "title": f"{r['severity']} {r['direction']} excursion of {r['tag']} ({r['phase']})",
                    "description": (
                        f"{r['tag']} outside its PAR [{r['par_lo']}, {r['par_hi']}] for "
                        f"{r['minutes_outside_par']:.0f} min (peak {r['peak_value']:.3g}, from "
                        f"{r['start_ts']:%Y-%m-%d %H:%M} to {r['end_ts']:%Y-%m-%d %H:%M} UTC)"
                    ),
                }
            )
    cr = lake.read("gold", "contamination_risk")
    if cr is not None and {"batch_id", "alarm"} <= set(cr.columns):
        # the confirmed alarm under the model's persistence rule (ml/alarm_rules.py) when
        # the table carries it; a raw window alarm only for tables scored before rules
        flag = "confirmed_alarm" if "confirmed_alarm" in cr.columns else "alarm"
        first = (
            cr.filter(pl.col(flag).cast(pl.Boolean))
            .sort("window_end_ts")
            .group_by("batch_id", maintain_order=True)
            .first()
        )
        for r in first.iter_rows(named=True):
            specs.append(
                {
                    "batch_id": r["batch_id"],
                    "unit_id": r.get("unit_id"),
                    "source": "contamination",
                    "source_ref": f"contamination:{r['batch_id']}",
                    "severity": "critical",
                    "title": "contamination alarm",
                    "description": f"contamination risk {r.get('risk')} at {r.get('window_end_ts')}",
                }
            )
    return _open_many(
        lake, SYSTEM, specs, "automatic: process event above severity threshold", context_id
    )


def advance(
    lake: Lake,
    deviation_id: str,
    actor_id: str,
    reason: str,
    investigation: str | None = None,
    root_cause: str | None = None,
    capa: str | None = None,
    context_id: str | None = None,
) -> Deviation:
    """open -> investigation (needs ``investigation``) -> capa (needs ``root_cause`` and
    ``capa``). Closing is ``close`` (QA, signed)."""
    _check_actor(lake, actor_id, "deviation.investigate")
    trail = AuditTrail(lake)
    with lake.lock("gxp_deviations"):
        lake.forget()
        d = get_deviation(lake, deviation_id)
        to = NEXT.get(d.state)
        if to is None or to == "closed":
            raise ValueError(
                f"deviation {deviation_id} is {d.state!r}; "
                + ("it is closed" if to is None else "closing needs `deviation close` (QA)")
            )
        changes: dict[str, tuple[Any, Any]] = {"state": (d.state, to)}
        new = d
        if to == "investigation":
            if not investigation:
                raise ValueError(f"moving {deviation_id} to investigation needs the plan/notes")
            new = replace(new, investigation=investigation)
            changes["investigation"] = (d.investigation, investigation)
        if to == "capa":
            if not (root_cause and capa):
                raise ValueError(f"moving {deviation_id} to capa needs a root cause and a CAPA")
            new = replace(new, root_cause=root_cause, capa=capa)
            changes["root_cause"] = (d.root_cause, root_cause)
            changes["capa"] = (d.capa, capa)
        new = replace(
            new,
            state=to,
            version=d.version + 1,
            updated_by=actor_id,
            updated_at=datetime.now(UTC),
            reason=reason,
        )
        _write(lake, [new])
    trail.append(
        [
            AuditEvent(
                "deviation_" + to,
                actor_id,
                f"{GXP_LAYER}/{TABLE}",
                deviation_id,
                f,
                o,
                n,
                reason,
                context_id,
            )
            for f, (o, n) in changes.items()
        ]
    )
    return new


def close(
    lake: Lake,
    deviation_id: str,
    user_id: str,
    password: str,
    reason: str,
    context_id: str | None = None,
) -> Deviation:
    """QA closes a deviation in state capa, signing (meaning: approval) its content."""
    u = get_user(lake, user_id)
    if u is not None:
        try:
            require(u, "deviation.close")
        except Exception as e:
            AuditTrail(lake).record(
                "deviation_close_refused",
                user_id,
                f"{GXP_LAYER}/{TABLE}",
                deviation_id,
                new_value=str(e),
                context_id=context_id,
            )
            raise
    d = get_deviation(lake, deviation_id)
    if d.state != "capa":
        raise ValueError(
            f"deviation {deviation_id} is {d.state!r}; only a deviation in capa "
            "(investigated, with root cause and CAPA) can be closed"
        )
    sig = sign(
        lake,
        user_id,
        password,
        "approval",
        "deviation",
        deviation_id,
        d.signed_content(),
        reason,
        context_id,
    )
    with lake.lock("gxp_deviations"):
        lake.forget()
        cur = get_deviation(lake, deviation_id)
        if cur.version != d.version:
            raise ValueError(
                f"deviation {deviation_id} changed while it was being signed; review it again"
            )
        new = replace(
            cur,
            state="closed",
            version=cur.version + 1,
            updated_by=user_id,
            updated_at=datetime.now(UTC),
            reason=reason,
            signature_id=sig.signature_id,
        )
        _write(lake, [new])
    AuditTrail(lake).record(
        "deviation_closed",
        user_id,
        f"{GXP_LAYER}/{TABLE}",
        deviation_id,
        "state",
        "capa",
        "closed",
        reason,
        context_id,
    )
    return new
