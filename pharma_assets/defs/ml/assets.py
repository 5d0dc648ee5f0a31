"""ML assets: feature tables, model training (MLflow-registered) and gold scoring tables.

Thin wrappers over ``pharma_assets.ml``: read lake tables, call the domain code, write Delta
tables, report every metric as metadata. Training registers a new MLflow version; the gate
proposes it only if it meets its minimum and beats (or ties) the champion on the same
held-out set (``registry.promotion_gate``), and a proposal becomes champion only when signed
(``compliance.promotions``: QA, or the system under the approved auto-promotion policy);
the decision, reason and promotion state are in the metadata.
"""

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import polars as pl

from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.lake.storage import Lake
from pharma_assets.ml import capabilities, features, pdm, quality, registry
from pharma_assets.ml.features.generic import (
    GENERIC_BASE_SCHEMA,
    GENERIC_HORIZONS,
    generic_feature_columns,
    generic_feature_table,
)
from pharma_assets.process.vocabulary import UnitClass

from .resources import MlResource

GROUP = "ml"
DELTA = {"delta", "polars"}
ML_KINDS = {"mlflow", "scikitlearn"}


def key_of(*parts: str) -> dg.AssetKey:
    return dg.AssetKey(list(parts))


SILVER_TIMELINE = key_of("silver", "batch_timeline")
SILVER_BATCHES = key_of("silver", "batches")
SILVER_LAB = key_of("silver", "lab_results")
SILVER_MAINT = key_of("silver", "maintenance_events")
SILVER_MATERIAL = key_of("silver", "material_lots")  # raw-material CoA results (batch features)
GOLD_SUMMARY = key_of("gold", "batch_summary")

FEATURE_TABLES = {
    "equipment_hour": "Feature table: one row per equipment item the unit class declares "
    "(bioreactor: agitator, feed pump; any other item from its declared condition tags) per "
    "hour of run time: condition signals (mean/max/std, 24 h slope and deviation, deviation "
    "from the item's baseline), hours and run-hours since maintenance.",
    "batch_hour": "Feature table: one row per batch per elapsed hour: CPP means and std, "
    "OUR/CER/RQ from the off-gas balance, specific O2 uptake, cumulative feed.",
    "batch": "Feature table: one row per batch per forecast horizon (day3, day7, harvest): "
    "recipe, lot history, raw-material CoA attributes of its media and feed lots "
    "(coa_*), process summaries and in-process LIMS known at that horizon.",
    "batch_generic": "Feature table: one row per batch per generic horizon (frac50: the first "
    "half of the expected duration; harvest) of per-tag, per-phase statistics of every tag the "
    "unit class and the site declare (mean, min, max, std, last, slope, area, hours outside the "
    "NOR, phase durations): the quality models' features for a class other than the bioreactor "
    "(empty for a class that uses the bioreactor features).",
    "contamination_windows": "Feature table: one row per batch per complete 5-minute window "
    "of batch time: OUR/CER, DO, O2 flow, agitation, pH, base rate, dCO2 levels, their "
    "deviation from the batch's trailing 2 h, capacitance change (contamination detector).",
    "mspc_hourly": "Feature table: one row per batch per complete elapsed hour: the mean of "
    "each monitored process tag (the aligned trajectories of MSPC batch monitoring).",
    "hourly": "The hourly rollup of silver/batch_timeline (one row per batch per elapsed hour, "
    "every tag): what the equipment-hour, batch-hour and batch features are built from, kept "
    "so that the next build re-reads the timeline only for new or changed batches.",
    "timeline_batches": "One row per batch of silver/batch_timeline: the fingerprint of its "
    "Delta files when the timeline products were computed (what makes the build incremental).",
}
SCORED_AT = pl.Datetime("us", "UTC")


def meta_value(v: Any) -> Any:
    """Metadata for a number (NaN as text: "not computable", e.g. no failures to catch)."""
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, (float, int)):
        v = float(v)
        return dg.MetadataValue.float(v) if math.isfinite(v) else dg.MetadataValue.text(str(v))
    return v


def table_meta(lake: Lake, layer: str, name: str) -> dict[str, Any]:
    return {
        "table_uri": dg.MetadataValue.path(lake.uri(layer, name)),
        "delta_version": lake.version(layer, name),
    }


def utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- features


def _spark_products(
    lakehouse: LakehouseResource,
) -> Callable[[Lake, Sequence[str], int], features.TimelineProducts]:
    """The timeline products of some batches computed on Spark (``engines/spark``)."""
    from pharma_assets.engines.spark.transforms import timeline_products

    spark = lakehouse.spark_session()

    def compute(lake: Lake, batch_ids: Sequence[str], _chunk: int) -> features.TimelineProducts:
        return timeline_products(spark, lake, batch_ids)

    return compute


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            ["features", name],
            group_name=GROUP,
            description=desc,
            kinds=DELTA,
            deps=[SILVER_TIMELINE, SILVER_BATCHES, SILVER_LAB, SILVER_MAINT, SILVER_MATERIAL],
        )
        for name, desc in FEATURE_TABLES.items()
    ],
    name="feature_tables",
)
def feature_tables(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource
) -> Iterator[dg.MaterializeResult]:
    """Build the feature tables from silver: ONE pass over the minute-level batch timeline
    gives the hourly rollup (equipment-hour, batch-hour and batch features), the 5-minute
    contamination windows and the MSPC hourly means, which the model and scoring assets
    read instead of scanning the timeline again. The pass reads only the batches whose
    timeline changed since the last build (features/timeline_batches); the rest are reused."""
    lake = lakehouse.lake()
    inp = features.load_inputs(lake, with_hourly=False)
    # PHARMA_ENGINE=spark: the per-batch products of the changed batches on Spark
    compute = _spark_products(lakehouse) if lakehouse.uses_spark else None
    inc = features.incremental_timeline_products(
        lake, features.stored_products(lake), compute=compute
    )
    prods = inc.products
    inp.hourly = prods.hourly
    context.log.info(
        "timeline read for %d batches (%s), %d reused, %d removed",
        len(inc.recomputed),
        "full build" if inc.full else "incremental",
        inc.reused,
        len(inc.removed),
    )
    now = utc_now()
    spec = lakehouse.spec()
    generic = (
        generic_feature_table(lake, spec, as_of=now)
        if spec.load_unit_class().generic_quality_features
        else pl.DataFrame(schema=GENERIC_BASE_SCHEMA)
    )
    tables = {
        "equipment_hour": features.equipment_hour_features(
            inp.hourly,
            inp.maintenance,
            inp.batches,
            features.declared_equipment(unit_class(lakehouse.spec_path)),
        ),
        "batch_hour": features.batch_hour_features(inp.hourly),
        "batch": pl.concat(
            [
                features.batch_features(inp, h, as_of=now).with_columns(horizon=pl.lit(h))
                for h in features.HORIZONS_H
            ],
            how="diagonal_relaxed",
        ),
        "batch_generic": generic,
        "contamination_windows": prods.windows,
        "mspc_hourly": prods.mspc_hourly,
        "hourly": prods.hourly,
        "timeline_batches": inc.state(),
    }
    versions = json.dumps(inp.versions, sort_keys=True)
    for name, df in tables.items():
        lake.overwrite("features", name, df, metadata={"source_versions": versions})
        context.log.info("features/%s: %d rows", name, df.height)
        yield dg.MaterializeResult(
            asset_key=["features", name],
            metadata={
                "rows": df.height,
                "columns": len(df.columns),
                "batches_recomputed": len(inc.recomputed),
                "batches_reused": inc.reused,
                **{f"source_version.{k}": v for k, v in inp.versions.items()},
                **table_meta(lake, "features", name),
            },
        )


def _feature_versions(lake: Lake, names: list[str], extra: dict[str, int | None]) -> dict:
    return {**{f"features/{n}": lake.version("features", n) for n in names}, **extra}


def feature_source_versions(lake: Lake, name: str) -> dict[str, int | None]:
    """The silver/gold table versions a feature table was built from (recorded in its
    latest commit by ``feature_tables``), as ``{"<layer>/<table>": version}``; empty if the
    commit does not say (a table written by an older version of this code)."""
    dt = lake.table("features", name)
    if dt is None:
        return {}
    try:
        raw = dt.history(1)[0].get("source_versions")
        out = json.loads(raw) if isinstance(raw, str) else {}
    except (ValueError, IndexError, KeyError):
        return {}
    return {str(k): (None if v is None else int(v)) for k, v in out.items()}


def read_feature_rows(lake: Lake, name: str, batch_ids: list[str]) -> pl.DataFrame:
    """Rows of ``features/<name>`` for some batches (none for an empty list)."""
    df = lake.read("features", name, filter_expr=pl.col("batch_id").is_in(batch_ids))
    if df is None:
        raise FileNotFoundError(
            f"table features/{name} does not exist in lake {lake.root}; materialize the "
            "feature tables first (asset feature_tables, or pharma-twin train)"
        )
    return df


def read_table(lake: Lake, layer: str, name: str) -> pl.DataFrame:
    df = lake.read(layer, name)
    if df is None:
        raise FileNotFoundError(
            f"table {layer}/{name} does not exist in lake {lake.root}; materialize it first "
            "(the feature tables need the lakehouse pipeline: pharma-twin pipeline)"
        )
    return df


# --------------------------------------------------------------------------- training


def unit_class(spec_path: str | None = None) -> UnitClass:
    """The unit class of the CPP spec in force (``PHARMA_CPP_SPEC``, else the built-in)."""
    from pharma_assets.lake.specs import load_spec

    return load_spec(spec_path or os.environ.get("PHARMA_CPP_SPEC") or None).load_unit_class()


def site_capabilities(
    lake: Lake, ml: MlResource, spec_path: str | None = None
) -> list[capabilities.Capability]:
    """What this lake's unit class and data support (``ml/capabilities.py``): the training
    and scoring assets skip what does not apply, with the reason in their metadata. The unit
    class is the CPP spec's (``unit_class``; the spec in force: ``PHARMA_CPP_SPEC``)."""
    from pharma_assets.lake.specs import load_spec

    summary = lake.read("gold", "batch_summary")
    uc = load_spec(spec_path or os.environ.get("PHARMA_CPP_SPEC") or None).load_unit_class()
    declared = uc.quality_targets  # None: the built-in targets and the site's release assays
    counts = (
        quality.target_counts(summary, declared)
        if summary is not None
        else {t: 0 for t in quality.targets_of(None, declared)}
    )
    return capabilities.assess(lake, counts, ml.reference(), uc)


def skipped(
    cap: capabilities.Capability, context: dg.AssetExecutionContext
) -> dg.MaterializeResult:
    """The result of a training or scoring asset whose capability the site's data lacks."""
    context.log.info("skipped: %s", cap.line())
    return dg.MaterializeResult(metadata={"skipped": True, "skip_reason": cap.reason})


@dg.asset(
    key=["gold", "model_capabilities"],
    group_name=GROUP,
    kinds=DELTA,
    deps=[SILVER_BATCHES, SILVER_MAINT, GOLD_SUMMARY, SILVER_LAB],
)
def model_capabilities(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource, ml: MlResource
) -> dg.MaterializeResult:
    """Which models the site's data supports, per training run: one row per capability
    (PdM, contamination, MSPC, each quality target) with trained/skipped and the one-line
    reason (no CMMS: no PdM; no cell-culture unit: no contamination model; ...)."""
    lake = lakehouse.lake()
    caps = site_capabilities(lake, ml, lakehouse.spec_path)
    lake.append("gold", "model_capabilities", capabilities.as_table(caps, context.run.run_id))
    skips = [c.line() for c in caps if not c.applies]
    for line in skips:
        context.log.info("skip: %s", line)
    return dg.MaterializeResult(
        metadata={
            "applies": ", ".join(c.key for c in caps if c.applies) or "none",
            "skipped": dg.MetadataValue.md("\n".join(f"- {x}" for x in skips) or "none"),
            **table_meta(lake, "gold", "model_capabilities"),
        }
    )


def registration_meta(reg: registry.Registration) -> dict[str, Any]:
    return {
        "model_version": reg.version,
        "promoted": reg.promoted,
        "challenger_score": meta_value(reg.challenger_score),
        "champion_score": meta_value(reg.champion_score)
        if reg.champion_score is not None
        else "none",
        "champion_version_before": reg.champion_version or "none",
        "gate_decision": reg.decision,
        "promotion_decision": reg.promotion_decision,
        "promotion_reason": reg.promotion_reason,
        "promotion_state": reg.promotion_state or "not proposed",
        "mlflow_run_id": reg.run_id,
    }


def register_model(
    context: dg.AssetExecutionContext, trained: registry.TrainedModel, score_fn: Any, ml: MlResource
) -> registry.Registration:
    """Register a trained model in MLflow (champion/challenger gate on the same held-out
    set), tag its MLflow run with the Dagster run that trained it, and hand a proposal to
    the signed promotion step (it becomes champion now only if the approved auto-promotion
    policy lets the system sign; otherwise it waits for QA)."""
    from pharma_assets.compliance import promotions

    uri = ml.uri()
    reg = registry.register(trained, score_fn, uri=uri)
    registry.tag_run(reg.run_id, {"dagster_run_id": context.run.run_id}, uri=uri)
    lake: Lake = context.resources.lakehouse.lake()
    out = promotions.propose(
        lake, reg, trained.higher_is_better, uri, context_id=context.run.run_id
    )
    if out is not None:
        reg.promoted = out.champion
        reg.promotion_state = out.state
        context.log.info("%s v%s promotion %s: %s", reg.name, reg.version, out.state, out.note)
    return reg


@dg.asset(
    key=["ml", "pdm_failure_72h"],
    group_name=GROUP,
    kinds=ML_KINDS,
    deps=[key_of("features", "equipment_hour"), SILVER_MAINT],
)
def pdm_failure_72h(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource, ml: MlResource
) -> dg.MaterializeResult:
    """Predictive maintenance: random forest of "failure within the next 72 h" per type of
    equipment item the unit class declares, trained on earlier run time and evaluated on later run time; recall on
    critical failures, false alarms per equipment-day and median lead time in metadata."""
    lake = lakehouse.lake()
    cap = capabilities.find(site_capabilities(lake, ml, lakehouse.spec_path), capabilities.PDM)
    if not cap.applies:
        return skipped(cap, context)
    eq = read_table(lake, "features", "equipment_hour")
    maint = read_table(lake, "silver", "maintenance_events")
    versions = _feature_versions(
        lake,
        ["equipment_hour"],
        {"silver/maintenance_events": lake.version("silver", "maintenance_events")},
    )
    gt_dir, gt_note = ml.ground_truth()
    context.log.info(gt_note)
    types = {s: d.type for s, d in unit_class(lakehouse.spec_path).equipment.items()}
    res = pdm.train_pdm(
        eq,
        maint,
        versions,
        ground_truth_dir=gt_dir,
        n_estimators=ml.pdm_trees,
        equipment_types=types or None,
    )
    for n in res.notes:
        context.log.info(n)
    reg = register_model(context, res.trained, res.score_fn, ml)
    return dg.MaterializeResult(
        metadata={
            **{k: meta_value(v) for k, v in res.trained.metrics.items()},
            **registration_meta(reg),
            "thresholds": dg.MetadataValue.json(
                {k: float(v) for k, v in res.model.thresholds.items()}
            ),
            "evaluation_set": res.trained.evaluation_set,
            "n_eval_rows": res.trained.n_eval,
            "ground_truth": gt_note,
            "notes": "; ".join(res.notes) or "none",
            "data_versions": dg.MetadataValue.json(res.trained.data_versions),
            "target_recall_critical": pdm.TARGET_RECALL,
            "target_met": bool(res.trained.metrics["recall_critical"] >= pdm.TARGET_RECALL),
        }
    )


def _batch_features_by_horizon(lake: Lake, generic: bool = False) -> dict[str, pl.DataFrame]:
    """The batch feature table per horizon: the bioreactor's (``features/batch``), or the
    generic per-tag features (``features/batch_generic``) for a class that uses them."""
    if generic:
        bf = read_table(lake, "features", "batch_generic")
        return {h: bf.filter(pl.col("horizon") == h).drop("horizon") for h in GENERIC_HORIZONS}
    bf = read_table(lake, "features", "batch")
    return {h: bf.filter(pl.col("horizon") == h).drop("horizon") for h in features.HORIZONS_H}


@dg.asset(
    key=["ml", "quality_models"],
    group_name=GROUP,
    kinds={"mlflow", "xgboost"},
    deps=[
        key_of("features", "batch"),
        key_of("features", "batch_generic"),
        GOLD_SUMMARY,
        SILVER_BATCHES,
        SILVER_LAB,
    ],
)
def quality_models(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource, ml: MlResource
) -> dg.MaterializeResult:
    """Batch quality: XGBoost forecasts of harvest titer, product mass, aggregates and
    galactosylation at day 3, day 7 and harvest; held-out batches are the latest by start.
    R2/MAE/RMSE and 80 % interval coverage per target and horizon in metadata."""
    lake = lakehouse.lake()
    caps = site_capabilities(lake, ml, lakehouse.spec_path)
    # the built-in targets and the site's own release assays, where enough results exist
    targets = tuple(c.target for c in caps if c.capability == capabilities.QUALITY and c.applies)
    skips = {
        c.target: c.reason for c in caps if c.capability == capabilities.QUALITY and not c.applies
    }
    if not targets:
        context.log.info("no quality target has enough results: %s", skips)
        return dg.MaterializeResult(
            metadata={
                "skipped": True,
                "models": 0,
                "skip_reason": "; ".join(f"{t}: {r}" for t, r in skips.items()),
            }
        )
    inp = features.load_inputs(lake, with_hourly=False)
    generic = unit_class(lakehouse.spec_path).generic_quality_features
    table = "batch_generic" if generic else "batch"
    inp.versions = _feature_versions(lake, [table], inp.versions)
    inp.versions.pop("silver/batch_timeline", None)
    if generic:  # per-tag features of the class's own tags, a regularised linear model
        results = quality.train_quality(
            inp,
            features_by_horizon=_batch_features_by_horizon(lake, generic=True),
            targets=targets,
            horizons=tuple(GENERIC_HORIZONS),
            learner="elastic_net",
            feature_columns=generic_feature_columns,
            feature_set="generic",
            enet_search=ml.enet_search(),
        )
    else:
        results = quality.train_quality(
            inp,
            n_estimators=ml.quality_trees,
            model_kinds=ml.model_kinds(),
            features_by_horizon=_batch_features_by_horizon(lake),
            targets=targets,
            horizons=quality.horizons_within(inp.batches),
        )
    meta: dict[str, Any] = {}
    summary = []
    for r in results:
        reg = register_model(context, r.trained, r.score_fn, ml)
        key = r.trained.name.removeprefix("pharma_quality_")
        for m, v in r.trained.metrics.items():
            meta[f"{key}.{m}"] = meta_value(v)
        meta[f"{key}.model_version"] = reg.version
        meta[f"{key}.promoted"] = reg.promoted
        meta[f"{key}.promotion_reason"] = reg.promotion_reason
        summary.append(f"{key}: R2={r.trained.metrics['r2']:.3f} v{reg.version} {reg.decision}")
        context.log.info("%s: %s", r.trained.name, reg.decision)
    yield_r2 = [
        r.trained.metrics["r2"]
        for r in results
        if r.model.target in quality.YIELD_TARGETS and r.model.horizon == "harvest"
    ]
    return dg.MaterializeResult(
        metadata={
            **meta,
            "models": len(results),
            "feature_set": "generic" if generic else "bioreactor",
            "evaluation_set": results[0].trained.evaluation_set if results else "none",
            "summary": dg.MetadataValue.md("\n".join(f"- {s}" for s in summary)),
            "targets_skipped": dg.MetadataValue.json(skips),
            "target_r2_yield": quality.R2_TARGET,
            "min_r2_yield_harvest": meta_value(min(yield_r2) if yield_r2 else float("nan")),
            "data_versions": dg.MetadataValue.json(inp.versions),
        }
    )


# --------------------------------------------------------------------------- scoring

EQUIPMENT_HEALTH_SCHEMA: dict[str, pl.DataType] = {
    "equipment_id": pl.String(),
    "unit_id": pl.String(),
    "equipment_type": pl.String(),
    "hour_ts": pl.Datetime("us", "UTC"),
    "batch_id": pl.String(),
    "health_score": pl.Float64(),
    "failure_probability": pl.Float64(),
    "alarm": pl.Boolean(),
    "threshold": pl.Float64(),
    "hours_since_maintenance": pl.Float64(),
    "model_name": pl.String(),
    "model_version": pl.String(),
    "scored_at": pl.Datetime("us", "UTC"),
}


@dg.asset(
    key=["gold", "equipment_health"],
    group_name=GROUP,
    kinds=DELTA,
    deps=[key_of("ml", "pdm_failure_72h"), key_of("features", "equipment_hour")],
)
def equipment_health(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource, ml: MlResource
) -> dg.MaterializeResult:
    """Health score (100 = healthy) and 72 h failure probability per critical equipment item
    per hour of run time, from the champion PdM model. Latest = max hour_ts per item."""
    lake = lakehouse.lake()
    eq = read_table(lake, "features", "equipment_hour")
    cap = capabilities.find(site_capabilities(lake, ml, lakehouse.spec_path), capabilities.PDM)
    champ = registry.load_champion(pdm.MODEL_NAME, uri=ml.uri()) if cap.applies else None
    now = utc_now()
    if not cap.applies:
        context.log.info("PdM does not apply (%s): equipment_health left empty", cap.reason)
        out = pl.DataFrame(schema=EQUIPMENT_HEALTH_SCHEMA)
        version = "not applicable"
    elif champ is None:
        context.log.warning("no champion %s yet: equipment_health left empty", pdm.MODEL_NAME)
        out = pl.DataFrame(schema=EQUIPMENT_HEALTH_SCHEMA)
        version = "untrained"
    else:
        model, version = champ
        out = (
            pdm.score_equipment(model, eq)
            .with_columns(
                model_name=pl.lit(pdm.MODEL_NAME),
                model_version=pl.lit(version),
                scored_at=pl.lit(now, SCORED_AT),
            )
            .select(list(EQUIPMENT_HEALTH_SCHEMA))
            .cast(EQUIPMENT_HEALTH_SCHEMA)  # type: ignore[arg-type]
        )
    lake.overwrite("gold", "equipment_health", out)
    latest = out.sort("hour_ts").group_by("equipment_id").last()
    return dg.MaterializeResult(
        metadata={
            "rows": out.height,
            "model_version": version,
            "equipment_items": latest.height,
            "items_in_alarm_now": int(latest["alarm"].sum()) if latest.height else 0,
            **table_meta(lake, "gold", "equipment_health"),
        }
    )


@dg.asset(
    key=["gold", "batch_forecasts"],
    group_name=GROUP,
    kinds=DELTA,
    deps=[
        key_of("ml", "quality_models"),
        key_of("features", "batch"),
        key_of("features", "batch_generic"),
        SILVER_BATCHES,
    ],
)
def batch_forecasts(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource, ml: MlResource
) -> dg.MaterializeResult:
    """Titer, product mass, aggregates and galactosylation forecasts with 80 % intervals for
    every batch at each horizon it has reached (day 3, day 7, harvest), from the champions."""
    lake = lakehouse.lake()
    uri = ml.uri()
    models: dict[tuple[str, str], tuple[Any, str]] = {}
    missing = []
    caps = site_capabilities(lake, ml, lakehouse.spec_path)
    generic = unit_class(lakehouse.spec_path).generic_quality_features
    for target in [c.target for c in caps if c.capability == capabilities.QUALITY]:
        if not capabilities.find(caps, f"{capabilities.QUALITY}:{target}").applies:
            continue  # no forecast of a target the site does not measure
        for h in GENERIC_HORIZONS if generic else features.HORIZONS_H:
            champ = registry.load_champion(quality.model_name(target, h), uri=uri)
            if champ is None:
                missing.append(quality.model_name(target, h))
            else:
                models[(target, h)] = champ
    if missing:
        context.log.warning("no champion yet for %s", ", ".join(missing))
    batches = read_table(lake, "silver", "batches")
    ended = set(batches.filter(pl.col("end_ts").is_not_null())["batch_id"].to_list())
    out = quality.forecast_rows(models, _batch_features_by_horizon(lake, generic), ended)
    out = out.with_columns(scored_at=pl.lit(utc_now(), SCORED_AT))
    lake.overwrite("gold", "batch_forecasts", out)
    return dg.MaterializeResult(
        metadata={
            "rows": out.height,
            "batches": out["batch_id"].n_unique(),
            "models_used": len(models),
            "models_missing": ", ".join(missing) or "none",
            **table_meta(lake, "gold", "batch_forecasts"),
        }
    )


TRAINING_ASSETS = [key_of("ml", "pdm_failure_72h"), key_of("ml", "quality_models")]
CAPABILITIES_KEY = key_of("gold", "model_capabilities")


def model_performance_asset(training_keys: list[dg.AssetKey]) -> dg.AssetsDefinition:
    """gold/model_performance, appended with the metrics of every model trained in this run
    (rebuilt from MLflow, the system of record, by the Dagster run id tag)."""

    @dg.asset(
        key=["gold", "model_performance"],
        group_name=GROUP,
        kinds=DELTA,
        deps=training_keys,
    )
    def model_performance(
        context: dg.AssetExecutionContext, lakehouse: LakehouseResource, ml: MlResource
    ) -> dg.MaterializeResult:
        """One row per model version x metric x evaluation set, appended per training run:
        value, brief target and whether it is met, champion flag, MLflow run id."""
        lake = lakehouse.lake()
        rows = registry.performance_rows_for_tag("dagster_run_id", context.run.run_id, ml.uri())
        if rows.height == 0:
            context.log.info("no model was trained in this run: nothing appended")
        lake.append("gold", "model_performance", rows)
        met = rows.filter(pl.col("target").is_not_null())
        return dg.MaterializeResult(
            metadata={
                "rows_appended": rows.height,
                "models": rows["model_name"].n_unique(),
                "targets_checked": met.height,
                "targets_met": int(met["target_met"].sum()) if met.height else 0,
                **table_meta(lake, "gold", "model_performance"),
            }
        )

    return model_performance
