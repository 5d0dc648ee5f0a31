"""Applying a held amendment of accepted data: a signed GxP action (QA approval).

The lake detects and holds amendments and does the data work
(``pharma_assets.lake.amendments``: ``prepare``, ``replace_rows``); here the signer
re-authenticates and signs the amendment record, and the decision and the old and new
values go into ``gxp/amendment_decisions`` and the audit trail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from pharma_assets.lake import amendments
from pharma_assets.lake.storage import Lake

from . import GXP_LAYER
from .audit import GXP_TABLE_CONFIGURATION, AuditTrail
from .signatures import sign


@dataclass
class Applied:
    amendment_id: str
    signature_id: str
    bronze_rows_replaced: int
    files_rederived: list[str]


def apply(
    lake: Lake,
    landing_root: str | Path,
    aid: str,
    user_id: str,
    password: str,
    reason: str,
    spec_path: str | None = None,
) -> Applied:
    """Apply a held amendment as a signed GxP action (see ``lake.amendments``)."""
    held = amendments.prepare(lake, landing_root, aid)
    trail = AuditTrail(lake)
    sig = sign(
        lake, user_id, password, "approval", "data_amendment", aid, held.record, reason, trail=trail
    )
    replaced, rederived = amendments.replace_rows(lake, held, spec_path)
    lake.append(
        GXP_LAYER,
        amendments.DECISIONS,
        pl.DataFrame(
            [
                {
                    "amendment_id": aid,
                    "state": "applied",
                    "decided_at": datetime.now(UTC),
                    "user_id": user_id,
                    "reason": reason,
                    "signature_id": sig.signature_id,
                    "bronze_rows_replaced": replaced,
                }
            ],
            schema=amendments.DECISION_SCHEMA,
        ),
        configuration=GXP_TABLE_CONFIGURATION,
    )
    changes = held.changes
    old_values = {r["key"]: json.loads(r["old_value"]) for r in changes.iter_rows(named=True)}
    new_values = {r["key"]: json.loads(r["new_value"]) for r in changes.iter_rows(named=True)}
    source = held.row["source"]
    trail.record(
        "data_amendment_applied",
        user_id,
        table_name=f"bronze/{source}",
        record_id=aid,
        field=",".join(rederived),
        old_value=old_values,
        new_value=new_values,
        reason=reason,
        context_id=sig.signature_id,
    )
    return Applied(aid, sig.signature_id, replaced, rederived)
