"""Contamination detection and MSPC batch monitoring as assets (thin wrappers over ML-B's
``pharma_assets.ml.contamination`` and ``pharma_assets.ml.mspc``).

Both models are unsupervised (trained on clean / good history as the MES and LIMS record
it); the held-out batches are the latest by start. The champion/challenger gate uses the
ground-truth detection figure when the ground-truth folder exists, otherwise the alarm
rate on held-out batches the plant itself calls clean/good (lower is better), and says so.
"""

from collections.abc import Callable
from datetime import datetime
from typing import Any

import dagster as dg
import polars as pl

from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.lake.storage import Lake
from pharma_assets.ml import capabilities, contamination, mspc, registry

from .assets import (
    DELTA,
    GOLD_SUMMARY,
    GROUP,
    SCORED_AT,
    SILVER_BATCHES,
    _k,
    _meta_value,
    _now,
    _read,
    _registration_meta,
    _table_meta,
    feature_source_versions,
    read_feature_rows,
    register_model,
    site_capabilities,
    skipped,
)
from .resources import MlResource

CONT_KEY = _k("ml", "contamination_iforest")
MSPC_KEY = _k("ml", "mspc_pca")


WINDOWS = "contamination_windows"
MSPC_HOURLY = "mspc_hourly"
FEAT_WINDOWS = _k("features", WINDOWS)
FEAT_MSPC = _k("features", MSPC_HOURLY)


def _windows(lake: Lake, batch_ids: list[str]) -> pl.DataFrame:
    """5-minute window features of some batches, from the feature table (built by
    feature_tables in the same pass over the timeline as the hourly rollup)."""
    return read_feature_rows(lake, WINDOWS, batch_ids)


def _hourly(lake: Lake, batch_ids: list[str]) -> pl.DataFrame:
    """MSPC hourly means (complete hours) of some batches, from the feature table."""
    return read_feature_rows(lake, MSPC_HOURLY, batch_ids)


def _scored_batches(batches: pl.DataFrame, cutoff: datetime) -> list[str]:
    """Held-out batches (started at/after the cutoff) and every running batch."""
    f = (pl.col("start_ts") >= cutoff) | (pl.col("status") == "running")
    return sorted(batches.filter(f)["batch_id"].to_list())


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
    trained: registry.TrainedModel,
    evaluate: Callable[[Any], dict[str, float]],
    ml: MlResource,
    gt_note: str,
    n_hold: int,
) -> dg.MaterializeResult:
    """Register a monitoring model (gate on ``trained.gate_metric`` re-evaluated for the
    champion) and report its metrics and the gate decision as asset metadata."""
    gate = trained.gate_metric
    reg = register_model(context, trained, lambda m: evaluate(m)[gate], ml)
    return dg.MaterializeResult(
        metadata={
            **{k: _meta_value(v) for k, v in trained.metrics.items()},
            **_registration_meta(reg),
            "gate_metric": gate,
            "ground_truth": gt_note,
            "evaluation_set": trained.evaluation_set,
            "n_heldout_batches": n_hold,
        }
    )


@dg.asset(key=CONT_KEY, group_name=GROUP, kinds={"mlflow", "scikitlearn"},
          deps=[FEAT_WINDOWS, SILVER_BATCHES])  # fmt: skip
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
    batches = _read(lake, "silver", "batches")
    cutoff, n_hold = contamination.split_by_start(batches)
    train_ids = contamination.clean_training_batches(batches, before=cutoff)
    model = contamination.train(_windows(lake, train_ids), seed=42)
    hold = sorted(batches.filter(pl.col("start_ts") >= cutoff)["batch_id"].to_list())
    hold_feats = _windows(lake, hold)
    labels, gt_note = _fault_labels(ml)
    context.log.info(gt_note)
    clean_hold = set(
        contamination.clean_training_batches(batches.filter(pl.col("start_ts") >= cutoff))
    )

    def evaluate(m: Any) -> dict[str, float]:
        sc = contamination.score(m, hold_feats)
        out: dict[str, float] = {}
        if labels is not None:
            out.update(contamination.evaluate(sc, labels, batches))
        mes_clean = sc.filter(pl.col("batch_id").is_in(sorted(clean_hold)))
        out["window_alarm_rate_mes_clean"] = (
            float(mes_clean["alarm"].mean()) if mes_clean.height else float("nan")  # type: ignore[arg-type]
        )
        return out

    metrics = {**model.train_summary(), **evaluate(model)}
    gate, higher = (
        ("detection_share", True) if labels is not None else ("window_alarm_rate_mes_clean", False)
    )
    trained = registry.TrainedModel(
        name=contamination.MODEL_NAME,
        model=model,
        params=model.params(),
        features=list(model.features),
        data_versions=_versions(lake, [("silver", "batches")], feature=WINDOWS),
        metrics=metrics,
        gate_metric=gate,
        higher_is_better=higher,
        evaluation_set=f"holdout: windows of batches started on/after {cutoff:%Y-%m-%d %H:%M} "
        f"UTC (n={len(hold)} batches, {hold_feats.height} windows)",
        n_eval=hold_feats.height,
        targets={"window_fpr_clean": 0.01},
        # contaminated held-out batches (ground truth), at least one of them detected
        minimum=registry.Minimum(
            "detector", positives_metric="n_contaminated", floors={"detection_share": 0.0}
        ),
    )
    return _register_and_report(context, trained, evaluate, ml, gt_note, n_hold)


@dg.asset(key=["gold", "contamination_risk"], group_name=GROUP, kinds=DELTA,
          deps=[CONT_KEY, FEAT_WINDOWS, SILVER_BATCHES])  # fmt: skip
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
    batches = _read(lake, "silver", "batches")
    cutoff, _ = contamination.split_by_start(batches)
    ids = _scored_batches(batches, cutoff)
    out = contamination.score(
        model, _windows(lake, ids), model_version=version,
        scored_at=_now(),
    )  # fmt: skip
    lake.overwrite(
        "gold", "contamination_risk", out.with_columns(pl.col("scored_at").cast(SCORED_AT))
    )
    return dg.MaterializeResult(
        metadata={
            "rows": out.height,
            "batches": len(ids),
            "alarms": int(out["alarm"].sum()),
            "model_version": version,
            **_table_meta(lake, "gold", "contamination_risk"),
        }
    )


# --------------------------------------------------------------------------- MSPC


@dg.asset(key=MSPC_KEY, group_name=GROUP, kinds={"mlflow", "scikitlearn"},
          deps=[FEAT_MSPC, SILVER_BATCHES, GOLD_SUMMARY])  # fmt: skip
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
    batches = _read(lake, "silver", "batches")
    summary = _read(lake, "gold", "batch_summary")
    cutoff, n_hold = contamination.split_by_start(batches)
    given = ml.reference()
    if given:  # the process engineer's reference batches
        ref = set(given)
        good = sorted(summary.filter(pl.col("batch_id").is_in(sorted(ref))
                                     & (pl.col("start_ts") < cutoff))["batch_id"].to_list())  # fmt: skip
        if len(good) < capabilities.MIN_REFERENCE_BATCHES:  # too few before the holdout
            good = sorted(ref & set(summary["batch_id"].to_list()))
    else:
        good = mspc.good_batches(summary, before=cutoff)
    train_hourly = _hourly(lake, good)
    # the tags this site has (bioreactor process tags with data, and the site's own tags)
    tags = [c for c in train_hourly.columns
            if c not in ("batch_id", "unit_id", "hour", "start", "step_min")
            and train_hourly[c].is_not_null().any()]  # fmt: skip
    model = mspc.train(train_hourly, batches, good, tags=tags)
    hold = sorted(batches.filter(pl.col("start_ts") >= cutoff)["batch_id"].to_list())
    hold_hourly = _hourly(lake, hold)
    labels, gt_note = _fault_labels(ml)
    context.log.info(gt_note)
    good_hold = set(summary.filter(
        (pl.col("start_ts") >= cutoff) & (pl.col("status") == "complete")
        & (pl.col("batch_id").is_in(sorted(given)) if given
           else pl.col("right_first_time").fill_null(False))
    )["batch_id"].to_list())  # fmt: skip

    def evaluate(m: Any) -> dict[str, float]:
        sc = mspc.monitor(m, hold_hourly, batches)
        out: dict[str, float] = {}
        if labels is not None:
            out.update(mspc.evaluate(sc, labels, batches))
        g = sc.filter(pl.col("batch_id").is_in(sorted(good_hold)))
        out["hour_alarm_rate_good"] = float(g["alarm"].mean()) if g.height else float("nan")  # type: ignore[arg-type]
        # the plant's own evidence where no ground truth exists: held-out completed batches
        # it does not call good (not right first time / not a reference batch)
        alarmed = set(sc.filter(pl.col("alarm").fill_null(False))["batch_id"].to_list())
        out["n_not_good"] = float(len(not_good_hold))
        out["batch_alarm_share_not_good"] = (
            len(alarmed & not_good_hold) / len(not_good_hold) if not_good_hold else float("nan")
        )
        out["batch_alarm_share_good"] = (
            len(alarmed & good_hold) / len(good_hold) if good_hold else float("nan")
        )
        return out

    done_hold = set(batches.filter((pl.col("start_ts") >= cutoff)
                                   & (pl.col("status") == "complete"))["batch_id"].to_list())  # fmt: skip
    not_good_hold = done_hold - good_hold
    metrics = {**model.train_summary(), **evaluate(model)}
    gate, higher = (
        ("detection_rate", True) if labels is not None else ("hour_alarm_rate_good", False)
    )
    trained = registry.TrainedModel(
        name=mspc.MODEL_NAME,
        model=model,
        params=model.params(),
        features=list(getattr(model, "tags", mspc.PROCESS_TAGS)),
        data_versions=_versions(
            lake, [("silver", "batches"), ("gold", "batch_summary")], feature=MSPC_HOURLY
        ),
        metrics=metrics,
        gate_metric=gate,
        higher_is_better=higher,
        evaluation_set=f"holdout: batches started on/after {cutoff:%Y-%m-%d %H:%M} UTC "
        f"(n={len(hold)})",
        n_eval=len(hold),
        # faulted held-out batches (ground truth), at least one of them detected; without
        # ground truth: held-out batches the plant does not call good, one of them alarmed
        minimum=registry.Minimum(
            "detector", positives_metric="n_faults", floors={"detection_rate": 0.0}
        )
        if labels is not None
        else registry.Minimum(
            "detector", positives_metric="n_not_good", floors={"batch_alarm_share_not_good": 0.0}
        ),
    )
    return _register_and_report(context, trained, evaluate, ml, gt_note, n_hold)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(["gold", n], group_name=GROUP, kinds=DELTA, description=d,
                     deps=[MSPC_KEY, FEAT_MSPC, SILVER_BATCHES])
        for n, d in {
            "mspc_scores": "Hotelling T2 and SPE with their maturity-dependent limits per batch "
            "per elapsed hour (running and held-out batches), top contributing tags.",
            "mspc_alarms": "One row per T2 or SPE alarm with per-tag contributions (JSON).",
            "golden_batch": "Golden-batch envelope per tag and elapsed hour: mean +/- 3 sd of "
            "good batches.",
        }.items()
    ],
    name="mspc_tables",
)  # fmt: skip
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
    batches = _read(lake, "silver", "batches")
    cutoff, _ = contamination.split_by_start(batches)
    ids = _scored_batches(batches, cutoff)
    detail = mspc.monitor(
        model, _hourly(lake, ids), batches, model_version=version,
        scored_at=_now(),
    )  # fmt: skip
    tables = {
        "mspc_scores": mspc.scores_table(detail),
        "mspc_alarms": mspc.alarms(detail),
        "golden_batch": mspc.envelope(model, version),
    }
    for n, df in tables.items():
        if "scored_at" in df.columns:
            df = df.with_columns(pl.col("scored_at").cast(SCORED_AT))
        lake.overwrite("gold", n, df)
        yield dg.MaterializeResult(
            asset_key=["gold", n],
            metadata={"rows": df.height, "model_version": version, **_table_meta(lake, "gold", n)},
        )


MONITORING_ASSETS = [contamination_iforest, contamination_risk, mspc_pca, mspc_tables]
MONITORING_TRAINING_KEYS = [CONT_KEY, MSPC_KEY]
