"""Optimisation assets (group ``optimise``): the twin calibrated to the running batches, their
recommendations and harvest times, and per recipe the sensitivity, design space and recipe
recommendation. Thin wrappers over ``pharma_assets.optimise`` (docs/optimisation.md)."""

from typing import Any

import dagster as dg
import polars as pl

from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.defs.ml.resources import MlResource
from pharma_assets.lake.storage import Lake
from pharma_assets.optimise import history, surrogate, tables
from pharma_assets.twin.config import load_recipes

GROUP = "optimise"
LAYER = "gold"
KINDS = {"delta", "polars", "numpy"}
SILVER_BATCHES = dg.AssetKey(["silver", "batches"])
SILVER_TIMELINE = dg.AssetKey(["silver", "batch_timeline"])
SILVER_LAB = dg.AssetKey(["silver", "lab_results"])
RUNNING_INPUTS = [SILVER_BATCHES, SILVER_TIMELINE, SILVER_LAB]


def _write(lake: Lake, name: str, df: pl.DataFrame) -> dict[str, Any]:
    lake.overwrite(LAYER, name, df)
    return {
        "rows": df.height,
        "table_uri": dg.MetadataValue.path(lake.uri(LAYER, name)),
        "delta_version": lake.version(LAYER, name),
    }


def _running(lakehouse: LakehouseResource) -> tuple[Lake, dict, dict]:  # type: ignore[type-arg]
    lake = lakehouse.lake()
    cals, errors = tables.calibrate_running(lake, load_recipes())
    return lake, cals, errors


def _par_check(df: pl.DataFrame, lakehouse: LakehouseResource, prefix: str) -> dg.AssetCheckResult:
    bad = tables.par_violations(df, lakehouse.spec(), prefix)
    return dg.AssetCheckResult(
        passed=bad == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows": df.height, "rows_outside_par": bad},
        description=None if bad == 0 else f"{bad} recommendations outside the PAR",
    )


@dg.asset(
    key=[LAYER, "twin_calibrated_state"],
    group_name=GROUP,
    kinds=KINDS,
    deps=RUNNING_INPUTS,
    check_specs=[
        dg.AssetCheckSpec("one_row_per_running_batch", asset=[LAYER, "twin_calibrated_state"])
    ],
    description="The twin calibrated to every running batch at its latest data: status "
    "(calibrated, prior_only, not_calibrated with the reason), batch multipliers with 95 % "
    "intervals, state now and the harvest product-mass forecast (5/50/95 %).",
)
def twin_calibrated_state(lakehouse: LakehouseResource) -> dg.MaterializeResult:
    lake, cals, errors = _running(lakehouse)
    df = tables.calibrated_state_table(cals, errors)
    running = len(tables.running_batches(lake))
    return dg.MaterializeResult(
        metadata={
            **_write(lake, "twin_calibrated_state", df),
            "running_batches": running,
            "not_calibrated": len(errors),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="one_row_per_running_batch",
                passed=df.height == running,
                metadata={"rows": df.height, "running_batches": running},
            )
        ],
    )


@dg.asset(
    key=[LAYER, "inbatch_surrogate"],
    group_name=GROUP,
    kinds={"mlflow", "scikitlearn"},
    description="The neural engine of the in-batch recommender, one per recipe: an MLP "
    "surrogate of the twin trained on the recipe's twin rollouts of disturbed plant draws "
    "(pharma_assets/optimise/surrogate.py), registered in MLflow as "
    "pharma_inbatch_surrogate_<recipe>; held-out R² and RMSE per CQA and recipe.",
)
def inbatch_surrogate(lakehouse: LakehouseResource, ml: MlResource) -> dg.MaterializeResult:
    frames: list[pl.DataFrame] = []
    meta: dict[str, Any] = {}
    for r in load_recipes().recipes:
        sur = surrogate.train(surrogate.rollouts(r, spec=lakehouse.spec()))
        reg = surrogate.log_to_mlflow(sur, r.recipe_id, uri=ml.uri())
        frames.append(
            pl.DataFrame(
                {
                    "recipe_id": r.recipe_id,
                    "output": list(sur.r2),
                    "r2": list(sur.r2.values()),
                    "rmse": list(sur.rmse.values()),
                    "n_train": sur.n_train,
                    "n_test": sur.n_test,
                }
            )
        )
        meta[f"{r.recipe_id}_mlflow_version"] = str(getattr(reg, "version", ""))
        meta[f"{r.recipe_id}_r2_product_mass_kg"] = sur.r2["product_mass_kg"]
    df = pl.concat(frames)
    return dg.MaterializeResult(
        metadata={**_write(lakehouse.lake(), "inbatch_surrogate", df), **meta}
    )


@dg.asset(
    key=[LAYER, "batch_recommendations"],
    group_name=GROUP,
    kinds=KINDS,
    deps=[*RUNNING_INPUTS, dg.AssetKey([LAYER, "inbatch_surrogate"])],
    check_specs=[
        dg.AssetCheckSpec("no_recommendation_outside_par", asset=[LAYER, "batch_recommendations"])
    ],
    description="For every running batch, what to change for the rest of the batch (production "
    "temperature, shift, pH, DO, feed, harvest; all within the PAR) to maximise expected "
    "product mass with every CQA in spec at P >= 95 %: one row per engine (mpc on the "
    "calibrated twin; neural on the MLP surrogate when one is registered).",
)
def batch_recommendations(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource, ml: MlResource
) -> dg.MaterializeResult:
    lake, cals, errors = _running(lakehouse)
    surs, notes = {}, []
    for rid in sorted({c.recipe.recipe_id for c in cals.values()}):
        surs[rid], note = surrogate.load_latest(rid, ml.uri())
        context.log.info(note)
        notes.append(note)
    df = tables.batch_recommendation_table(cals, errors, surs, lakehouse.spec())
    return dg.MaterializeResult(
        metadata={**_write(lake, "batch_recommendations", df), "surrogate": "; ".join(notes)},
        check_results=[
            dg.AssetCheckResult(
                check_name="no_recommendation_outside_par", **_kw(_par_check(df, lakehouse, "rec_"))
            )
        ],
    )


def _kw(r: dg.AssetCheckResult) -> dict[str, Any]:
    return {
        "passed": r.passed,
        "severity": r.severity,
        "metadata": r.metadata,
        "description": r.description,
    }


@dg.asset(
    key=[LAYER, "harvest_recommendations"],
    group_name=GROUP,
    kinds=KINDS,
    deps=RUNNING_INPUTS,
    check_specs=[
        dg.AssetCheckSpec(
            "harvest_within_schedule_window", asset=[LAYER, "harvest_recommendations"]
        )
    ],
    description="For every running batch, the harvest day (within planned end -2 d to +1 d) "
    "with the most expected product whose viability (>= 50 %) and CQA limits hold with "
    "P >= 95 %, with the expected product mass and its 90 % interval.",
)
def harvest_recommendations(lakehouse: LakehouseResource) -> dg.MaterializeResult:
    lake, cals, errors = _running(lakehouse)
    df = tables.harvest_table(cals, errors, lakehouse.spec())
    ok = df.filter(pl.col("status") == "advised") if df.height and "status" in df.columns else df
    outside = 0
    if ok.height:
        outside = ok.filter(
            (pl.col("harvest_day") < pl.col("window_lo_day") - 1e-9)
            | (pl.col("harvest_day") > pl.col("window_hi_day") + 1e-9)
        ).height
    return dg.MaterializeResult(
        metadata=_write(lake, "harvest_recommendations", df),
        check_results=[
            dg.AssetCheckResult(
                check_name="harvest_within_schedule_window",
                passed=outside == 0,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"rows_outside_window": outside},
            )
        ],
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            [LAYER, "twin_sensitivity"],
            group_name=GROUP,
            kinds=KINDS,
            description="Sobol first-order and total indices (95 % bootstrap intervals) "
            "of each CQA and product mass to the CPP set-points over their PAR, per recipe.",
        ),
        dg.AssetSpec(
            [LAYER, "design_space"],
            group_name=GROUP,
            kinds=KINDS,
            description="ICH Q8 design space per recipe: P(every CQA in spec) over the "
            "plant's variability on a grid of the two most influential CPPs; cells "
            "with P >= 95 % are in the design space.",
        ),
    ],
    check_specs=[dg.AssetCheckSpec("probabilities_valid", asset=[LAYER, "design_space"])],
)
def sensitivity_and_design_space(lakehouse: LakehouseResource) -> Any:
    lake = lakehouse.lake()
    idx, ds = tables.sensitivity_tables(spec=lakehouse.spec())
    yield dg.MaterializeResult(
        asset_key=[LAYER, "twin_sensitivity"], metadata=_write(lake, "twin_sensitivity", idx)
    )
    yield dg.MaterializeResult(
        asset_key=[LAYER, "design_space"],
        metadata={
            **_write(lake, "design_space", ds),
            "cells_in_design_space": int(ds["in_design_space"].sum()),
        },
    )
    bad = ds.filter(~pl.col("p_in_spec").is_between(0, 1)).height
    yield dg.AssetCheckResult(
        asset_key=[LAYER, "design_space"],
        check_name="probabilities_valid",
        passed=bad == 0,
        metadata={"invalid": bad},
    )


@dg.asset(
    key=[LAYER, "recipe_recommendations"],
    group_name=GROUP,
    kinds=KINDS | {"optuna"},
    check_specs=[
        dg.AssetCheckSpec("no_recommendation_outside_par", asset=[LAYER, "recipe_recommendations"])
    ],
    description="Per recipe: the set-points a Bayesian optimiser (optuna TPE) finds on the twin "
    "for the most expected product mass over the plant's variability (every CQA in spec at "
    "P >= 95 %, within PAR and the schedule), verified on the full engine for 50 fresh plant "
    "batches against the current recipe (gain with 95 % CI, right-first-time). Adopting it "
    "is a recipe change request signed by QA (pharma_assets/compliance/recipe_requests.py).",
)
def recipe_recommendations(lakehouse: LakehouseResource) -> dg.MaterializeResult:
    lake = lakehouse.lake()
    df = tables.recipe_recommendation_table(spec=lakehouse.spec())
    r = _par_check(df, lakehouse, "recommended_")
    return dg.MaterializeResult(
        metadata=_write(lake, "recipe_recommendations", df),
        check_results=[dg.AssetCheckResult(check_name="no_recommendation_outside_par", **_kw(r))],
    )


@dg.asset(
    key=[LAYER, "history_patterns"],
    group_name=GROUP,
    kinds=KINDS,
    deps=[
        dg.AssetKey(["gold", "batch_summary"]),
        dg.AssetKey(["silver", "telemetry_stats"]),
        dg.AssetKey(["silver", "batch_phases"]),
        dg.AssetKey(["silver", "lab_results"]),
        dg.AssetKey(["silver", "material_lots"]),
        dg.AssetKey([LAYER, "recipe_recommendations"]),
    ],
    check_specs=[
        dg.AssetCheckSpec("intervals_ordered", asset=[LAYER, "history_patterns"]),
    ],
    description="Learning from history: per recipe, the top quarter of completed batches by "
    "product mass against the rest on realised set-points, shift day, batch length, seed "
    "density and the lots' CoA results (difference with 95 % Welch interval, Hedges' g, "
    "Spearman with product mass), and where the twin optimiser's proposal lies against them "
    "(pharma_assets/optimise/history.py). Observational: associations, not effects.",
)
def history_patterns(lakehouse: LakehouseResource) -> dg.MaterializeResult:
    lake = lakehouse.lake()
    prop, cur = history.proposals_from_table(lake.read(LAYER, "recipe_recommendations"))
    df = history.from_lake(lake, prop, cur)
    bad = 0
    if df.height and "diff_lo" in df.columns:
        bad = df.filter(
            pl.col("diff").is_not_null()
            & (
                (pl.col("diff_lo") > pl.col("diff") + 1e-9)
                | (pl.col("diff_hi") < pl.col("diff") - 1e-9)
            )
        ).height
    significant = int(df["significant"].sum()) if "significant" in df.columns else 0
    return dg.MaterializeResult(
        metadata={
            **_write(lake, "history_patterns", df),
            "recipes": df["recipe_id"].n_unique() if df.height else 0,
            "significant_features": significant,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="intervals_ordered", passed=bad == 0, metadata={"rows_bad": bad}
            )
        ],
    )


RUNNING_ASSETS = [twin_calibrated_state, batch_recommendations, harvest_recommendations]
RECIPE_ASSETS = [
    inbatch_surrogate,
    sensitivity_and_design_space,
    recipe_recommendations,
    history_patterns,
]
