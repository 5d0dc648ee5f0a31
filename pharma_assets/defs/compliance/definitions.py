"""The compliance code location: the audit trail as an asset with its verification check, and
the sensor that writes every materialization of a governed table into the audit trail."""

from __future__ import annotations

import dagster as dg

from pharma_assets.compliance.audit import AuditTrail
from pharma_assets.compliance.deviations import auto_open
from pharma_assets.defs.lakehouse.resources import LakehouseResource

from .materializations import audit_materializations

audit_trail_asset = dg.AssetSpec(
    ["gxp", "audit_trail"],
    group_name="gxp",
    description=(
        "GxP audit trail (21 CFR 11.10(e)): append-only Delta table of HMAC-chained entries "
        "written by the compliance package (logins, signatures, deviations, releases, spec "
        "changes, materializations). Not materialized by Dagster; checked by audit_chain_valid."
    ),
    kinds={"delta"},
)


batch_release_asset = dg.AssetSpec(
    ["gxp", "batch_release"],
    group_name="gxp",
    description=(
        "QA's signed batch release decisions (21 CFR 11.50/11.70): append-only Delta table "
        "written by `pharma-twin release` and the QA release page, one final decision per "
        "batch bound to the signed review record. Not materialized by Dagster; gold/batch_summary "
        "reads it (release_status), and gold_refresh_sensor refreshes gold when it changes."
    ),
    kinds={"delta"},
)


@dg.asset_check(asset=audit_trail_asset.key, name="audit_chain_valid", blocking=False)
def audit_chain_valid(lakehouse: LakehouseResource) -> dg.AssetCheckResult:
    """Verify every entry's HMAC, the links, the sequence, the anchored head and every
    retirement of the anchor (the same ``AuditTrail.verify`` as the CLI and the QA page)."""
    res = AuditTrail(lakehouse.lake()).verify()
    return dg.AssetCheckResult(
        passed=res.ok,
        severity=dg.AssetCheckSeverity.ERROR,
        description=res.summary(),
        metadata={
            "entries": res.entries,
            "head_seq": res.head_seq if res.head_seq is not None else -1,
            "anchor_seq": res.anchor_seq if res.anchor_seq is not None else -1,
            "first_bad_seq": res.first_bad_seq if res.first_bad_seq is not None else -1,
            "failure_kind": res.kind or "",
            "unanchored_entries": res.unanchored_entries,
            "anchor_retirements": "\n".join(res.retirements) or "none",
            "verify_seconds": round(res.seconds, 3),
        },
    )


audit_verify_job = dg.define_asset_job(
    "audit_verify_job",
    selection=dg.AssetSelection.checks(audit_chain_valid),
    description="Verify the GxP audit trail (runs the audit_chain_valid check).",
)


@dg.sensor(
    name="materialization_audit",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Writes every materialization of a bronze/silver/gold table of this lake "
    "(versions, rows, run id, code version) into its GxP audit trail, then opens deviations for "
    "new major/critical CPP excursions and contamination alarms. Runs that wrote another lake "
    "on the same instance are not recorded here.",
)
def materialization_audit_sensor(
    context: dg.SensorEvaluationContext, lakehouse: LakehouseResource
) -> dg.SkipReason:
    lake = lakehouse.lake()
    cursor = context.cursor or ""
    scanned = int(cursor) if cursor.lstrip("-").isdigit() else -1
    done, top = audit_materializations(lake, context.instance, scanned)
    opened = auto_open(lake, context_id=f"sensor:{context.cursor or ''}") if done.recorded else []
    context.update_cursor(str(top))
    return dg.SkipReason(f"{done.summary()}; opened {len(opened)} deviations")


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[audit_trail_asset, batch_release_asset],
        asset_checks=[audit_chain_valid],
        jobs=[audit_verify_job],
        sensors=[materialization_audit_sensor],
    )
