"""Corrections to accepted data: detected, held, and applied only as a signed GxP action.

A delivery *amends* accepted data when it changes values bronze already holds:

- a file under a new name whose keys (telemetry ``unit_id, tag, ts``; LIMS ``sample_id,
  analyte``; MES ``event_id``; CMMS ``work_order_id``) overlap rows of accepted files with
  different values (``kind = new_file``); an exact re-delivery (same values) is not an
  amendment: its rows stay duplicates (``duplicate_reading`` and the like), as before;
- an accepted file overwritten in place: its size or inode change time differs from its
  ledger row and its SHA-256 differs (``kind = overwritten``). A file touched without a
  content change is recorded once (``kind = unchanged``) and is not an amendment.

Held: the file is quarantined with reason ``amended_delivery`` (``bronze/quarantine``; for
a new name also its ledger row) and detail naming the differing keys; every differing key
with its old and new values is in ``bronze/amendment_changes``; the amendment itself in
``bronze/amendments``. ``pharma-twin pipeline`` prints the held amendments and the bronze
asset's metadata counts them (``quarantine_reasons``).

Applied (``compliance.amendments.apply``, CLI ``pharma-twin amendment apply ID --reason ... --user ...``): the
signer re-authenticates and signs (meaning ``approval``, QA) the amendment record; the old
bronze rows of the changed keys are replaced by the delivered ones (an overwritten file:
all its rows by the new content), in one Delta commit per table, so the previous Delta
versions keep the old rows; silver is re-derived for the files concerned; the decision is in
``gxp/amendment_decisions`` and the audit trail records old and new values. Rows of a
new-name amendment with keys never delivered before are not taken by ``apply``: deliver them
in a file of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from .storage import GXP_LAYER, UTC_US, Lake

if TYPE_CHECKING:
    from .landing_scan import LandedFile

LAYER = "bronze"
TABLE = "amendments"
CHANGES = "amendment_changes"
DECISIONS = "amendment_decisions"  # in the gxp layer (written by compliance.amendments)
KEYS: dict[str, tuple[str, ...]] = {
    "telemetry": ("unit_id", "tag", "ts"),
    "lims": ("sample_id", "analyte"),
    "mes": ("event_id",),
    "cmms": ("work_order_id",),
    "coa": ("coa_id", "attribute"),
}
_META = ("source_file", "ingested_at", "ingest_run_id", "row_hash", "raw", "extra")
EXAMPLES = 5  # differing keys named in the quarantine detail (all are in amendment_changes)

AMENDMENT_SCHEMA: dict[str, pl.DataType] = {
    "amendment_id": pl.String(),
    "kind": pl.String(),
    "source": pl.String(),
    "source_file": pl.String(),
    "unit_id": pl.String(),
    "batch_id": pl.String(),
    "sha256": pl.String(),
    "old_sha256": pl.String(),
    "bytes": pl.Int64(),
    "arrived_at": UTC_US,
    "rows": pl.Int64(),
    "keys_changed": pl.Int64(),
    "old_files": pl.String(),
    "detail": pl.String(),
    "detected_at": UTC_US,
    "run_id": pl.String(),
}
CHANGE_SCHEMA: dict[str, pl.DataType] = {
    "amendment_id": pl.String(),
    "batch_id": pl.String(),
    "key": pl.String(),
    "old_value": pl.String(),
    "new_value": pl.String(),
    "old_source_file": pl.String(),
}
DECISION_SCHEMA: dict[str, pl.DataType] = {
    "amendment_id": pl.String(),
    "state": pl.String(),
    "decided_at": UTC_US,
    "user_id": pl.String(),
    "reason": pl.String(),
    "signature_id": pl.String(),
    "bronze_rows_replaced": pl.Int64(),
}


def _overlaps(df: pl.DataFrame, lo: Any, hi: Any) -> bool:
    """Whether ``df``'s readings can fall in [lo, hi] (its own min/max, no filtered copy)."""
    a, b = df["ts"].min(), df["ts"].max()
    if a is None or b is None or lo is None or hi is None:
        return True
    return not (b < lo or a > hi)  # type: ignore[operator]


def amendment_id(source_file: str, sha256: str) -> str:
    return "AMD-" + hashlib.sha256(f"{source_file}\0{sha256}".encode()).hexdigest()[:12]


def value_columns(source: str, df: pl.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in KEYS[source] and c not in _META]


def _json(row: dict[str, Any]) -> str:
    return json.dumps(
        {
            k: (None if v is None else v if isinstance(v, (int, float, str, bool)) else str(v))
            for k, v in row.items()
        },
        sort_keys=True,
        allow_nan=True,
    )


def diff(source: str, new: pl.DataFrame, old: pl.DataFrame) -> pl.DataFrame:
    """Keys present in both with different values: key, old_value, new_value (JSON), old file.

    Each side's first row per key counts (a repeat inside one file is a duplicate, not a
    correction)."""
    keys = list(KEYS[source])
    vals = [c for c in value_columns(source, new) if c in old.columns]
    if new.height == 0 or old.height == 0:
        return pl.DataFrame(schema={k: v for k, v in CHANGE_SCHEMA.items() if k != "amendment_id"})
    n = new.select(*keys, *vals).drop_nulls(keys).unique(keys, keep="first", maintain_order=True)
    o = (
        old.select(*keys, *vals, "source_file")
        .drop_nulls(keys)
        .unique(keys, keep="first", maintain_order=True)
    )
    j = n.join(o, on=keys, how="inner", suffix="_old")
    same = pl.lit(True)
    for c in vals:
        a, b = pl.col(c), pl.col(f"{c}_old")
        eq = a.eq_missing(b)
        if j.schema[c].is_float():
            eq = eq | (a.is_nan() & b.is_nan()).fill_null(False)
        same = same & eq
    ch = j.filter(~same)
    if ch.height == 0:
        return pl.DataFrame(schema={k: v for k, v in CHANGE_SCHEMA.items() if k != "amendment_id"})
    rows = []
    for r in ch.iter_rows(named=True):
        rows.append(
            {
                "batch_id": r.get("batch_id"),
                "key": _json({k: r[k] for k in keys}),
                "old_value": _json({c: r[f"{c}_old"] for c in vals if r[f"{c}_old"] != r[c]}),
                "new_value": _json({c: r[c] for c in vals if r[f"{c}_old"] != r[c]}),
                "old_source_file": r["source_file"],
            }
        )
    return pl.DataFrame(
        rows, schema={k: v for k, v in CHANGE_SCHEMA.items() if k != "amendment_id"}
    )


def _detail(kind: str, changes: pl.DataFrame, rows: int, extra: str = "") -> str:
    old = sorted(set(changes["old_source_file"].to_list()))
    eg = "; ".join(
        f"{k}: {o} -> {n}"
        for k, o, n in changes.head(EXAMPLES).select("key", "old_value", "new_value").iter_rows()
    )
    what = "overwritten in place" if kind == "overwritten" else "new delivery"
    return (
        f"{what}: {changes.height} of {rows} rows change accepted values of "
        f"{', '.join(old)}{extra}; e.g. {eg}. Held: `pharma-twin amendment list`, apply "
        "with `pharma-twin amendment apply ID --reason ... --user ...`"
    )


class AmendmentGuard:
    """Per ingestion of one source: finds deliveries that change accepted values."""

    def __init__(self, lake: Lake, source: str, known: pl.DataFrame, run_id: str) -> None:
        self.lake, self.source, self.run_id = lake, source, run_id
        acc = known.filter(pl.col("status") == "accepted")
        self.with_rows = {b or "" for b in acc["batch_id"].to_list()}
        self.ledger = {r["source_file"]: r for r in known.iter_rows(named=True)}

    # ------------------------------------------------------------------ new names
    def check(
        self,
        f: LandedFile,
        df: pl.DataFrame,
        sha: str,
        group: Sequence[Any],
        committed: Iterable[str],
    ) -> None:
        """Raise FileRejected(amended_delivery) if ``df`` changes accepted values."""
        from .bronze import FileRejected  # (bronze imports this module)

        if self.source not in KEYS:
            return
        bid = f.batch_id
        olds = [g[1] for g in group if isinstance(g[1], pl.DataFrame) and g[0].batch_id == bid]
        if self.source == "telemetry" and olds:  # only readings in this file's time window
            lo, hi = df["ts"].min(), df["ts"].max()
            olds = [o for o in olds if _overlaps(o, lo, hi)]  # (scalar test first: cheap)
            olds = [
                o for o in (o.filter(pl.col("ts").is_between(lo, hi)) for o in olds) if o.height
            ]
        if (bid or "") in self.with_rows or (bid is not None and bid in set(committed)):
            old = self._bronze_rows(bid, df)
            if old is not None and old.height:
                olds.append(old)
        if not olds:
            return
        old = pl.concat(
            [o.select([c for c in o.columns if c in olds[0].columns]) for o in olds],
            how="diagonal_relaxed",
        )
        changes = diff(self.source, df, old)
        if changes.height == 0:
            return
        aid = amendment_id(f.rel, sha)
        detail = _detail("new_file", changes, df.height)
        self._register(aid, "new_file", f, sha, None, df.height, changes, detail)
        raise FileRejected("amended_delivery", f"{aid}: {detail}", rows=df.height)

    def _bronze_rows(
        self, bid: str | None, df: pl.DataFrame, files: Sequence[str] | None = None
    ) -> pl.DataFrame | None:
        where = pl.lit(True) if bid is None else pl.col("batch_id") == bid
        if files is not None:
            where = where & pl.col("source_file").is_in(list(files))
        elif self.source == "telemetry" and df.height:
            where = where & pl.col("ts").is_between(df["ts"].min(), df["ts"].max())
        return self.lake.read(LAYER, self.source, filter_expr=where)

    # ------------------------------------------------------------------ in place
    def overwritten_files(self, files: Sequence[LandedFile]) -> list[LandedFile]:
        return changed_in_place(self.lake, files, self.ledger)

    def check_overwritten(
        self, f: LandedFile, data: bytes, now: datetime | None = None
    ) -> str | None:
        """Register an accepted file whose content changed in place; returns the reason
        code recorded (``amended_delivery``) or None when the content is unchanged."""
        from .bronze import FileRejected, _finish, read_source_file

        def parse(d: bytes) -> pl.DataFrame:
            df = read_source_file(self.source, d)
            return _finish(df, f, now or datetime.now(UTC), self.run_id, self.source)

        led = self.ledger[f.rel]
        sha = hashlib.sha256(data).hexdigest()
        # the content accepted, or already recorded as an amendment (held or applied)
        reg = self.lake.read(
            LAYER,
            TABLE,
            ["sha256"],
            filter_expr=(pl.col("source_file") == f.rel) & (pl.col("kind") == "overwritten"),
        )
        if sha == led["sha256"] or (reg is not None and sha in reg["sha256"].to_list()):
            self._register(
                amendment_id(f.rel, sha),
                "unchanged",
                f,
                sha,
                led["sha256"],
                led["rows"],
                None,
                "touched in place, content unchanged",
            )
            return None
        aid = amendment_id(f.rel, sha)
        note = f"; ledger SHA-256 {led['sha256'][:12]}..., now {sha[:12]}..."
        if led["status"] != "accepted":
            detail = (
                f"overwritten in place (the file was quarantined: {led['reason']}); "
                f"deliver the corrected file under a new name{note}"
            )
            self._register(aid, "overwritten", f, sha, led["sha256"], None, None, detail)
            return "amended_delivery"
        try:
            new = parse(data)
        except FileRejected as e:
            new, extra = None, f" (the new content is unreadable: {e.reason}: {e.detail})"
        old = self._bronze_rows(f.batch_id, pl.DataFrame(), files=[f.rel])
        if new is None or old is None:
            changes = pl.DataFrame(
                schema={k: v for k, v in CHANGE_SCHEMA.items() if k != "amendment_id"}
            )
        else:
            changes, extra = diff(self.source, new, old), ""
            n_new = new.select(list(KEYS[self.source])).unique().height
            n_old = old.select(list(KEYS[self.source])).unique().height
            common = (
                new.join(old, on=list(KEYS[self.source]), how="semi")
                .select(list(KEYS[self.source]))
                .unique()
                .height
            )
            if n_new - common or n_old - common:
                extra = f" ({n_new - common} keys added, {n_old - common} removed)"
        rows = None if new is None else new.height
        detail = (
            _detail("overwritten", changes, rows or 0, extra + note)
            if changes.height
            else f"overwritten in place{extra}{note}"
        )
        self._register(aid, "overwritten", f, sha, led["sha256"], rows, changes, detail)
        return "amended_delivery"

    # ------------------------------------------------------------------ records
    def _register(
        self,
        aid: str,
        kind: str,
        f: LandedFile,
        sha: str,
        old_sha: str | None,
        rows: int | None,
        changes: pl.DataFrame | None,
        detail: str,
    ) -> None:
        """Record the amendment once (a rerun after a crash finds it already there)."""
        from .bronze import QUARANTINE_SCHEMA, _log_row

        got = self.lake.read(
            LAYER, TABLE, ["amendment_id", "arrived_at"], filter_expr=pl.col("amendment_id") == aid
        )
        arrived = datetime.fromtimestamp(f.arrived_ns / 1e9, UTC)
        if got is not None and arrived in got["arrived_at"].to_list():
            return
        now = datetime.now(UTC)
        c = changes if changes is not None else pl.DataFrame()
        if c.height:
            self.lake.append(
                LAYER,
                CHANGES,
                c.with_columns(amendment_id=pl.lit(aid))
                .select(list(CHANGE_SCHEMA))
                .cast(CHANGE_SCHEMA),  # type: ignore[arg-type]
            )
        old_files = ",".join(sorted(set(c["old_source_file"].to_list()))) if c.height else None
        row = {
            "amendment_id": aid,
            "kind": kind,
            "source": self.source,
            "source_file": f.rel,
            "unit_id": f.unit_id,
            "batch_id": f.batch_id,
            "sha256": sha,
            "old_sha256": old_sha,
            "bytes": f.size,
            "arrived_at": arrived,
            "rows": rows,
            "keys_changed": c.height,
            "old_files": old_files,
            "detail": detail,
            "detected_at": now,
            "run_id": self.run_id,
        }
        self.lake.append(LAYER, TABLE, pl.DataFrame([row], schema=AMENDMENT_SCHEMA))
        if kind == "overwritten":  # the new-name case is quarantined by bronze's commit
            q = _log_row(
                f,
                sha,
                "quarantined",
                "amended_delivery",
                f"{aid}: {detail}",
                rows,
                now,
                self.run_id,
            )
            self.lake.append(
                LAYER,
                "quarantine",
                pl.DataFrame([{k: q[k] for k in QUARANTINE_SCHEMA}], schema=QUARANTINE_SCHEMA),
            )


def changed_in_place(
    lake: Lake, files: Sequence[LandedFile], ledger: dict[str, dict[str, Any]] | None = None
) -> list[LandedFile]:
    """Landed files with a ledger row whose size or change time differ from it (and from the
    last registration of the file in ``bronze/amendments``): overwritten or touched."""
    if ledger is None:
        from .bronze import read_log

        log = read_log(lake)
        ledger = {r["source_file"]: r for r in log.iter_rows(named=True)}
    cand = []
    for f in files:
        led = ledger.get(f.rel)
        if led is None or led["arrived_at"] is None or f.is_link:
            continue
        ctime_us = f.arrived_ns // 1000
        led_us = int(led["arrived_at"].timestamp() * 1_000_000)
        if f.size != led["bytes"] or abs(ctime_us - led_us) > 1000:
            cand.append(f)
    if not cand:
        return []
    reg = lake.read(
        LAYER,
        TABLE,
        ["source_file", "arrived_at", "bytes"],
        filter_expr=pl.col("source_file").is_in([f.rel for f in cand]),
    )
    seen: dict[str, list[tuple[int, int]]] = {}
    if reg is not None:
        for rel, at, size in reg.iter_rows():
            seen.setdefault(rel, []).append((int(at.timestamp() * 1_000_000), size))
    return [
        f
        for f in cand
        if not any(
            abs(at - f.arrived_ns // 1000) <= 1000 and size == f.size
            for at, size in seen.get(f.rel, [])
        )
    ]


# ---------------------------------------------------------------------------- listing
def list_amendments(lake: Lake, state: str | None = None) -> pl.DataFrame:
    """Amendments (kind new_file or overwritten) with their state: held, applied."""
    am = lake.read(LAYER, TABLE)
    if am is None:
        return pl.DataFrame(schema={**AMENDMENT_SCHEMA, "state": pl.String()})
    am = am.filter(pl.col("kind") != "unchanged").unique(
        "amendment_id", keep="last", maintain_order=True
    )
    dec = lake.read(GXP_LAYER, DECISIONS, ["amendment_id", "state"])
    if dec is not None and dec.height:
        am = am.join(dec.unique("amendment_id", keep="last"), on="amendment_id", how="left")
    else:
        am = am.with_columns(state=pl.lit(None, pl.String))
    am = am.with_columns(pl.col("state").fill_null("held")).sort("detected_at")
    return am.filter(pl.col("state") == state) if state else am


def held(lake: Lake) -> pl.DataFrame:
    return list_amendments(lake, "held")


# ---------------------------------------------------------------------------- applying
@dataclass
class HeldAmendment:
    """A held amendment checked and ready to apply: its row, the landed file's bytes, the
    differing keys, and ``record``, the content the signer signs."""

    row: dict[str, Any]
    data: bytes
    changes: pl.DataFrame
    record: dict[str, Any]


def prepare(lake: Lake, landing_root: str | Path, aid: str) -> HeldAmendment:
    """Check that amendment ``aid`` is held and its landed file unchanged since it was
    detected; the record to sign. Raises ValueError naming what is wrong."""
    am = list_amendments(lake).filter(pl.col("amendment_id") == aid)
    if am.height == 0:
        raise ValueError(f"no amendment {aid!r} (see `pharma-twin amendment list`)")
    a = am.row(0, named=True)
    if a["state"] != "held":
        raise ValueError(f"amendment {aid} is {a['state']}, not held")
    if a["kind"] == "overwritten" and a["old_sha256"] and a["rows"] is None:
        raise ValueError(f"amendment {aid} cannot be applied: {a['detail']}")
    path = Path(landing_root) / a["source_file"]
    if path.is_symlink() or not path.is_file():
        raise ValueError(f"landed file {a['source_file']} of {aid} is gone from {landing_root}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != a["sha256"]:
        raise ValueError(
            f"landed file {a['source_file']} changed again since {aid} was "
            "detected; the next ingestion records the new content"
        )
    ch = lake.read(LAYER, CHANGES, filter_expr=pl.col("amendment_id") == aid)
    changes = ch if ch is not None else pl.DataFrame(schema=CHANGE_SCHEMA)
    record = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in a.items()}
    record["changes_sha256"] = hashlib.sha256(
        "\n".join(sorted(changes["key"] + "|" + changes["new_value"])).encode()
    ).hexdigest()
    return HeldAmendment(a, data, changes, record)


def replace_rows(
    lake: Lake, held_am: HeldAmendment, spec_path: str | None = None
) -> tuple[int, list[str]]:
    """The data part of applying a (signed) amendment: the old bronze rows of the changed
    keys replaced by the delivered ones in one commit per table, silver re-derived for the
    files concerned. Returns (bronze rows replaced, files re-derived). The signature, the
    decision and the audit trail are the caller's (``compliance.amendments.apply``)."""
    from . import bronze
    from .landing_scan import LandedFile

    a, changes = held_am.row, held_am.changes
    aid, source, bid = a["amendment_id"], a["source"], a["batch_id"]
    f = LandedFile(source, a["source_file"], a["unit_id"], bid, len(held_am.data), 0)
    new = bronze._finish(
        bronze.read_source_file(source, held_am.data),
        f,
        datetime.now(UTC),
        f"amendment:{aid}",
        source,
    )
    keys = list(KEYS[source])
    where = pl.col("batch_id") == bid if bid is not None else pl.lit(True)
    if a["kind"] == "overwritten":
        files = [a["source_file"]]
    else:
        files = sorted(set(changes["old_source_file"].to_list()))
    with lake.lock(f"bronze-{source}"):
        old = lake.read(LAYER, source, filter_expr=where & pl.col("source_file").is_in(files))
        assert old is not None
        if a["kind"] == "overwritten":
            out = new.with_columns(ingested_at=pl.lit(old["ingested_at"].min(), UTC_US))
            replaced = old.height
        else:
            first = new.unique(keys, keep="first", maintain_order=True)
            changed = first.join(_key_frame(changes, keys, first), on=keys, how="semi")
            hit = old.join(changed.select(keys), on=keys, how="semi")
            replaced = hit.height
            repl = hit.select(*keys, "source_file", "ingested_at", "ingest_run_id").join(
                changed.drop("source_file", "ingested_at", "ingest_run_id"), on=keys, how="left"
            )
            out = pl.concat(
                [old.join(changed.select(keys), on=keys, how="anti"), repl.select(old.columns)],
                how="vertical_relaxed",
            )
        pred = _in("source_file", files) + (f" AND batch_id = '{bid}'" if bid else "")
        lake.overwrite(
            LAYER,
            source,
            out.select(old.columns).cast(old.schema),
            predicate=pred,
            metadata={"amendment_id": aid},
        )
    return replaced, _rederive(lake, source, bid, files, spec_path, aid)


def _key_frame(changes: pl.DataFrame, keys: list[str], like: pl.DataFrame) -> pl.DataFrame:
    """The changed keys (JSON in ``changes.key``) typed like ``like``'s key columns."""
    rows = [json.loads(k) for k in changes["key"].to_list()]
    df = pl.DataFrame(rows, schema={k: pl.String for k in keys}, orient="row") if rows else None
    if df is None:
        return like.select(keys).clear()
    out = []
    for k in keys:
        t = like.schema[k]
        if t == UTC_US:
            out.append(pl.col(k).str.to_datetime(time_unit="us", time_zone="UTC"))
        else:
            out.append(pl.col(k).cast(t))
    return df.select(out)


def _in(col: str, values: Sequence[str]) -> str:
    return f"{col} IN (" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


def _rederive(
    lake: Lake, source: str, bid: str | None, files: list[str], spec_path: str | None, aid: str
) -> list[str]:
    """Silver again from the amended bronze rows: telemetry files are withdrawn from the
    silver tables (the previous Delta versions keep them) and processed again; the sources
    rebuilt whole are rebuilt."""
    from . import silver
    from .specs import load_spec

    # as the pipeline applies it: with the site tags declared in the landing zone
    landing = os.environ.get("PHARMA_LANDING_DIR", "landing")
    spec = load_spec(spec_path or None, landing=landing)
    if source == "telemetry" and bid is not None:
        with lake.lock(f"silver-telemetry-{bid}"):
            pred = _in("source_file", files) + f" AND batch_id = '{bid}'"
            for name in (*silver.TELEMETRY_TABLES, "telemetry_log"):
                t = lake.table(silver.LAYER, name)
                if t is not None:
                    t.delete(pred)
        silver.process_telemetry(lake, [bid], spec, f"amendment:{aid}")
    elif source == "mes":
        silver.build_batches(lake, [bid] if bid else None, spec)
    elif source == "lims":
        silver.build_lab_results(lake, spec, [bid] if bid else None)
    elif source == "cmms":
        silver.build_maintenance(lake)
    elif source == "coa":
        from .material_lots import build_material_lots

        build_material_lots(lake)
    return files
