"""Batch release: QA reviews a batch's record and signs its release or rejection.

Why: a batch may only leave the plant after the quality unit has reviewed its record
(process data, excursions, deviations, CQAs) and signed the decision. The decision is
stored in ``<lake>/gxp/batch_release`` (append-only) with the signature, which is bound to
the SHA-256 of the exact review record (``batch_record``): if the record changes later (a
late lab result, a reopened deviation), the signature no longer verifies against it.

``gold/batch_summary.release_status`` shows the decision: the gold asset declares
``gxp/batch_release`` as an input and passes ``release_status_frame`` to the gold build
(``lake.gold.apply_release_decisions``; ``pending_review`` until a decision lands).
``apply_release_status`` is the same join for a page that shows a decision at once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import polars as pl

from pharma_assets.lake.gold import PENDING_RELEASE, apply_release_decisions
from pharma_assets.lake.storage import UTC_US, Lake

from . import GXP_LAYER
from .audit import GXP_TABLE_CONFIGURATION, AuditTrail
from .deviations import list_deviations
from .signatures import sign
from .users import get_user, require

TABLE = "batch_release"
DECISIONS = ("released", "rejected")
PENDING = PENDING_RELEASE
SCHEMA: dict[str, pl.DataType] = {
    "batch_id": pl.String(),
    "decision": pl.String(),
    "signature_id": pl.String(),
    "user_id": pl.String(),
    "printed_name": pl.String(),
    "decided_at": UTC_US,
    "reason": pl.String(),
    "record_hash": pl.String(),
}
# the batch_summary columns QA reviews; the record hash covers exactly these values
REVIEW_COLUMNS_PREFIXES = ("cqa_", "exc_count_")
REVIEW_COLUMNS = (
    "batch_id",
    "unit_id",
    "product",
    "recipe_id",
    "recipe_version",
    "start_ts",
    "end_ts",
    "status",
    "end_reason",
    "media_lot",
    "feed_lot",
    "inoculum_lot",
    "base_lot",
    "final_titer_g_l",
    "excursions_total",
    "excursions_major",
    "right_first_time",
    "spec_version",
)


def batch_record(lake: Lake, batch_id: str) -> dict[str, Any]:
    """The content QA reviews and signs: the batch's summary row and its deviations."""
    summary = lake.read("gold", "batch_summary", filter_expr=pl.col("batch_id") == batch_id)
    if summary is None or summary.height == 0:
        raise ValueError(
            f"batch {batch_id!r} is not in gold/batch_summary (run the pipeline; "
            "see `pharma-twin pipeline`)"
        )
    cols = [
        c for c in summary.columns if c in REVIEW_COLUMNS or c.startswith(REVIEW_COLUMNS_PREFIXES)
    ]
    row = summary.select(cols).row(0, named=True)
    devs = list_deviations(lake, batch_id=batch_id)
    row["deviations"] = [
        {
            "deviation_id": d["deviation_id"],
            "version": d["version"],
            "state": d["state"],
            "severity": d["severity"],
            "signature_id": d["signature_id"],
        }
        for d in devs.iter_rows(named=True)
    ]
    return row


def decisions(lake: Lake) -> pl.DataFrame:
    df = lake.read(GXP_LAYER, TABLE)
    return df if df is not None else pl.DataFrame(schema=SCHEMA)


def decide(
    lake: Lake,
    batch_id: str,
    decision: str,
    user_id: str,
    password: str,
    reason: str,
    context_id: str | None = None,
) -> dict[str, Any]:
    """QA signs ``released`` or ``rejected`` for a batch. Release needs a complete batch and
    every deviation of the batch closed; a decision is final (one per batch)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision {decision!r} must be one of {DECISIONS}")
    trail = AuditTrail(lake)
    u = get_user(lake, user_id)
    if u is not None:
        try:
            require(u, "batch.release")
        except Exception as e:
            trail.record(
                "batch_release_refused",
                user_id,
                "gold/batch_summary",
                batch_id,
                new_value=str(e),
                context_id=context_id,
            )
            raise
    prior = decisions(lake).filter(pl.col("batch_id") == batch_id)
    if prior.height:
        raise ValueError(
            f"batch {batch_id} was already {prior['decision'][0]} by "
            f"{prior['user_id'][0]}; a decision is final"
        )
    record = batch_record(lake, batch_id)
    if decision == "released":
        problems = []
        if record["status"] != "complete":
            problems.append(f"status is {record['status']!r}, not 'complete'")
        still_open = [d["deviation_id"] for d in record["deviations"] if d["state"] != "closed"]
        if still_open:
            problems.append(f"deviations not closed: {', '.join(still_open)}")
        if problems:
            raise ValueError(f"batch {batch_id} cannot be released: {'; '.join(problems)}")
    sig = sign(
        lake,
        user_id,
        password,
        "approval",
        "batch_release",
        batch_id,
        record,
        f"{decision}: {reason}",
        context_id,
    )
    row = {
        "batch_id": batch_id,
        "decision": decision,
        "signature_id": sig.signature_id,
        "user_id": user_id,
        "printed_name": sig.printed_name,
        "decided_at": datetime.now(UTC),
        "reason": reason,
        "record_hash": sig.record_hash,
    }
    with lake.lock("gxp_batch_release"):
        lake.forget()
        if decisions(lake).filter(pl.col("batch_id") == batch_id).height:
            raise ValueError(f"batch {batch_id} was decided concurrently; see the audit trail")
        lake.append(
            GXP_LAYER,
            TABLE,
            pl.DataFrame({k: [v] for k, v in row.items()}, schema=SCHEMA),
            configuration=GXP_TABLE_CONFIGURATION,
        )
    trail.record(
        "batch_" + decision,
        user_id,
        "gold/batch_summary",
        batch_id,
        "release_status",
        PENDING,
        decision,
        reason,
        context_id,
    )
    return row


def release_status_frame(lake: Lake) -> pl.DataFrame:
    """batch_id, release_status, released_by, released_at for every decided batch."""
    d = decisions(lake).sort("decided_at").group_by("batch_id", maintain_order=True).last()
    return d.select(
        "batch_id",
        pl.col("decision").alias("release_status"),
        pl.col("printed_name").alias("released_by"),
        pl.col("decided_at").alias("released_at"),
    )


def apply_release_status(summary: pl.DataFrame, lake: Lake) -> pl.DataFrame:
    """gold/batch_summary with the QA decision: ``release_status`` is ``released`` /
    ``rejected`` / ``pending_review``, plus ``released_by`` and ``released_at``."""
    return apply_release_decisions(summary, release_status_frame(lake))
