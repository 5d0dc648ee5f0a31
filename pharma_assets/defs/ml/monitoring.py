"""Contamination detection and MSPC batch monitoring as assets (thin wrappers over
``pharma_assets.ml.monitoring``, ``pharma_assets.ml.contamination`` and
``pharma_assets.ml.mspc``): read the inputs, call the domain code, register, write, report.
"""

from typing import Any

import dagster as dg
import polars as pl

from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.lake.storage import Lake
from pharma_assets.ml import alarm_rules, capabilities, contamination, monitoring, mspc, registry

from .assets import (
    DELTA,
    GOLD_SUMMARY,
    GROUP,
    SCORED_AT,
    SILVER_BATCHES,
    feature_source_versions,
    key_of,
    meta_value,
    read_feature_rows,
    read_table,
    register_model,
    registration_meta,
    site_capabilities,
    skipped,
    table_meta,
    utc_now,
)
from .resources import MlResource

CONT_KEY = key_of("ml", "contamination_iforest")
MSPC_KEY = key_of("ml", "mspc_pca")


WINDOWS = "contamination_windows"
MSPC_HOURLY = "mspc_hourly"
FEAT_WINDOWS = key_of("features", WINDOWS)
FEAT_MSPC = key_of("features", MSPC_HOURLY)


def _windows(lake: Lake, batch_ids: list[str]) -> pl.DataFrame:
    """5-minute window features of some batches, from the feature table (built by
    feature_tables in the same pass over the timeline as the hourly rollup)."""
    return read_feature_rows(lake, WINDOWS, batch_ids)


def _hourly(lake: Lake, batch_ids: list[str]) -> pl.DataFrame:
    """MSPC hourly means (complete hours) of some batches, from the feature table."""
    return read_feature_rows(lake, MSPC_HOURLY, batch_ids)


def _fault_labels(ml: MlResource) -> tuple[pl.DataFrame | None, str]:
    gt, note = ml.ground_truth()
    return (pl.read_parquet(gt / "fault_labels.parquet") if gt else None), note


def _versions(
    lake: Lake, tables: list[tuple[str, str]], feature: str | None = None
) -> dict[str, int | None]:
    """Delta versions read: the tables, and for a feature table its version plus the
    silver/batch_timeline version it was computed from."""
    out = {f"{layer}/{name}": lake.version(layer, name) for layer, name in tables}
    if feature is not None:
        out[f"features/{feature}"] = lake.version("features", feature)
        src = feature_source_versions(lake, feature).get("silver/batch_timeline")
        out["silver/batch_timeline"] = src
    return out


# --------------------------------------------------------------------------- contamination


def _register_and_report(
    context: dg.AssetExecutionContext,
    t: monitoring.MonitoringTraining,
    ml: MlResource,
    gt_note: str,
) -> dg.MaterializeResult:
    """Register a monitoring model (gate on ``trained.gate_metric`` re-evaluated for the
    champion) and report its metrics and the gate decision as asset metadata."""
    trained, gate = t.trained, t.trained.gate_metric
    reg = register_model(context, trained, lambda m: t.evaluate(m)[gate], ml)
    return dg.MaterializeResult(
        metadata={
            **{k: meta_value(v) for k, v in trained.metrics.items()},
            **registration_meta(reg),
            "gate_metric": gate,
            "ground_truth": gt_note,
            "evaluation_set": trained.evaluation_set,
            "n_heldout_batches": t.n_heldout_batches,
        }
    )


@dg.asset(
    key=CONT_KEY,
    group_name=GROUP,
    kinds={"mlflow", "scikitlearn"},
    deps=[FEAT_WINDOWS, SILVER_BATCHES],
)
def contamination_iforest(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource, ml: MlResource
) -> dg.MaterializeResult:
    """Contamination detector: isolation forest on 5-minute windows of clean batches (MES:
    completed and harvested); held-out false-positive rate per window, share of contaminated
    batches detected and median delay from onset in metadata."""
    lake = lakehouse.lake()
    cap = capabilities.find(
        site_capabilities(lake, ml, lakehouse.spec_path), capabilities.CONTAMINATION
    )
    if not cap.applies:
        return skipped(cap, context)
    batches = read_table(lake, "silver", "batches")
    labels, gt_note = _fault_labels(ml)
    context.log.info(gt_note)
    versions = _versions(lake, [("silver", "batches")], feature=WINDOWS)
    t = monitoring.train_contamination(batches, lambda ids: _windows(lake, ids), labels, versions)
    return _register_and_report(context, t, ml, gt_note)


@dg.asset(
    key=["gold", "contamination_risk"],
    group_name=GROUP,
    kinds=DELTA,
    deps=[CONT_KEY, FEAT_WINDOWS, SILVER_BATCHES],
)
def contamination_risk(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource, ml: MlResource
) -> dg.MaterializeResult:
    """Contamination risk per 5-minute window of every running batch and of the held-out
    history (anomaly score, threshold, alarm, risk 0-1, most deviating features)."""
    lake = lakehouse.lake()
    cap = capabilities.find(
        site_capabilities(lake, ml, lakehouse.spec_path), capabilities.CONTAMINATION
    )
    if not cap.applies:  # never scored (so never a deviation) where it does not apply
        return skipped(cap, context)
    champ = registry.load_champion(contamination.MODEL_NAME, uri=ml.uri())
    if champ is None:
        context.log.warning("no champion contamination model yet: nothing scored")
        return dg.MaterializeResult(metadata={"rows": 0, "model_version": "untrained"})
    model, version = champ
    batches = read_table(lake, "silver", "batches")
    cutoff, _ = contamination.split_by_start(batches)
    ids = monitoring.scored_batches(batches, cutoff)
    out = contamination.score(
        model,
        _windows(lake, ids),
        model_version=version,
        scored_at=utc_now(),
    )
    out = alarm_rules.confirm_contamination(model, out)
    lake.overwrite(
        "gold", "contamination_risk", out.with_columns(pl.col("scored_at").cast(SCORED_AT))
    )
    return dg.MaterializeResult(
        metadata={
            "rows": out.height,
            "batches": len(ids),
            "alarms": int(out["alarm"].sum()),
            "confirmed_alarms": int(out["confirmed_alarm"].sum()),
            "alarm_rule": alarm_rules.rule_of(model, alarm_rules.CONTAMINATION_DEFAULT).describe(),
            "model_version": version,
            **table_meta(lake, "gold", "contamination_risk"),
        }
    )


# --------------------------------------------------------------------------- MSPC


@dg.asset(
    key=MSPC_KEY,
    group_name=GROUP,
    kinds={"mlflow", "scikitlearn"},
    deps=[FEAT_MSPC, SILVER_BATCHES, GOLD_SUMMARY],
)
def mspc_pca(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource, ml: MlResource
) -> dg.MaterializeResult:
    """Batch monitoring: evolving multiway PCA per recipe on good batches (complete, right
    first time), maturity-dependent T2 and SPE limits; detection and false-alarm rates on
    held-out batches in metadata."""
    lake = lakehouse.lake()
    cap = capabilities.find(site_capabilities(lake, ml, lakehouse.spec_path), capabilities.MSPC)
    if not cap.applies:
        return skipped(cap, context)
    batches = read_table(lake, "silver", "batches")
    summary = read_table(lake, "gold", "batch_summary")
    labels, gt_note = _fault_labels(ml)
    context.log.info(gt_note)
    versions = _versions(
        lake, [("silver", "batches"), ("gold", "batch_summary")], feature=MSPC_HOURLY
    )
    t = monitoring.train_mspc(
        batches, summary, lambda ids: _hourly(lake, ids), labels, versions, ml.reference()
    )
    return _register_and_report(context, t, ml, gt_note)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            ["gold", n],
            group_name=GROUP,
            kinds=DELTA,
            description=d,
            deps=[MSPC_KEY, FEAT_MSPC, SILVER_BATCHES],
        )
        for n, d in {
            "mspc_scores": "Hotelling T2 and SPE with their maturity-dependent limits per batch "
            "per elapsed hour (running and held-out batches), top contributing tags.",
            "mspc_alarms": "One row per T2 or SPE alarm with per-tag contributions (JSON).",
            "golden_batch": "Golden-batch envelope per tag and elapsed hour: mean +/- 3 sd of "
            "good batches.",
        }.items()
    ],
    name="mspc_tables",
)
def mspc_tables(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource, ml: MlResource
) -> Any:
    """Score running and held-out batches with the champion MSPC model."""
    lake = lakehouse.lake()
    cap = capabilities.find(site_capabilities(lake, ml, lakehouse.spec_path), capabilities.MSPC)
    champ = registry.load_champion(mspc.MODEL_NAME, uri=ml.uri()) if cap.applies else None
    if champ is None:
        context.log.warning("no champion MSPC model yet: nothing scored")
        for n in ("mspc_scores", "mspc_alarms", "golden_batch"):
            yield dg.MaterializeResult(asset_key=["gold", n], metadata={"rows": 0})
        return
    model, version = champ
    batches = read_table(lake, "silver", "batches")
    cutoff, _ = contamination.split_by_start(batches)
    ids = monitoring.scored_batches(batches, cutoff)
    detail = mspc.monitor(
        model,
        _hourly(lake, ids),
        batches,
        model_version=version,
        scored_at=utc_now(),
    )
    scores = alarm_rules.confirm_mspc(model, mspc.scores_table(detail))
    confirmed = scores.select("batch_id", "elapsed_h", confirmed=pl.col("confirmed_alarm"))
    tables = {
        "mspc_scores": scores,
        "mspc_alarms": mspc.alarms(
            detail,
            model.stat(),
            model.factor(),
            mspc_level_factor(model),
            mspc_drift_factor(model),
        ).join(confirmed, on=["batch_id", "elapsed_h"], how="left"),
        "golden_batch": mspc.envelope(model, version),
    }
    for n, df in tables.items():
        if "scored_at" in df.columns:
            df = df.with_columns(pl.col("scored_at").cast(SCORED_AT))
        lake.overwrite("gold", n, df)
        yield dg.MaterializeResult(
            asset_key=["gold", n],
            metadata={"rows": df.height, "model_version": version, **table_meta(lake, "gold", n)},
        )


def mspc_level_factor(model: Any) -> float | None:
    """The level factor of a change model whose alarm includes the level statistic (None
    for other models and models pickled before the option)."""
    f = getattr(model, "level_factor", None)
    return f() if callable(f) else None


def mspc_drift_factor(model: Any) -> float | None:
    """The drift term's factor of a change model (None for models before the option)."""
    f = getattr(model, "drift_factor", None)
    drift_h = int(getattr(model, "change_drift_h", 0) or 0)
    return float(f()) if callable(f) and drift_h > 0 else None


MONITORING_ASSETS = [contamination_iforest, contamination_risk, mspc_pca, mspc_tables]
MONITORING_TRAINING_KEYS = [CONT_KEY, MSPC_KEY]
