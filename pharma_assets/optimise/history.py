"""Learning from history: what the best historical batches did, next to what the twin-based
optimiser proposes.

Per recipe, the completed batches of ``gold/batch_summary`` are split into the top quarter by
product mass and the rest. For every feature a process engineer would look at (the realised
set-points, the shift day, the batch length, the seed density and the lots' certificate of
analysis results) the two groups are compared: means, their difference with a 95 % Welch
interval, the standardised effect size (Hedges' g) and the rank correlation of the feature
with product mass over all batches. Where the optimiser has a decision for the feature
(`recipe.DECISIONS`), its proposal and the current recipe value are placed against the
history: the proposal's percentile among the top batches, whether history ever ran there,
and whether history points the same way (the top-minus-rest difference has the sign of the
proposed change and its interval excludes 0).

History is observational: the features of a plant's batches move together (lots, seasons,
units) and the recipe's set-points barely vary between batches (control holds them), so a
difference here is an association, not the effect of changing the set-point; the twin's
optimiser is the causal model. The comparison says where the two agree and where the
proposal goes beyond anything the plant has run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import polars as pl

from .recipe import DECISIONS

TOP_SHARE = 0.25
MIN_BATCHES = 8  # per recipe, below this the groups are too small to compare

#: realised set-points: (tag, phase) of silver/telemetry_stats -> feature (= optimiser decision)
SETPOINT_FEATURES = {
    ("temperature_c", "growth"): "T_grow",
    ("temperature_c", "production"): "T_prod",
    ("ph", "production"): "ph_sp",
    ("dissolved_oxygen_pct", "production"): "do_sp",
}
#: lot attributes: (material, attribute) of silver/material_lots -> feature
LOT_FEATURES = {
    ("media", "growth_promotion_pct"): "media_growth_promotion_pct",
    ("media", "manganese_ppb"): "media_manganese_ppb",
    ("media", "glucose_g_l"): "media_glucose_g_l",
    ("media", "osmolality_mosm_kg"): "media_osmolality_mosm_kg",
    ("feed", "productivity_use_test_pct"): "feed_productivity_use_test_pct",
    ("feed", "glucose_pct_label"): "feed_glucose_pct_label",
}
SEED_VCD = "seed_vcd_e6_cells_ml"
FEATURE_KIND = {
    **{f: "set-point" for f in SETPOINT_FEATURES.values()},
    "shift_day": "schedule",
    "harvest_day": "schedule",
    SEED_VCD: "inoculum",
    **{f: "lot" for f in LOT_FEATURES.values()},
}


def batch_features(
    summary: pl.DataFrame,
    stats: pl.DataFrame | None = None,
    phases: pl.DataFrame | None = None,
    lab: pl.DataFrame | None = None,
    lots: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One row per completed batch with a product mass: ``batch_id, recipe_id,
    product_mass_kg`` and every feature the lake holds for it (missing sources leave their
    columns out, a batch without a value has null).

    ``summary`` is ``gold/batch_summary``; ``stats`` ``silver/telemetry_stats`` (phase means
    of the set-point tags); ``phases`` ``silver/batch_phases`` (the production phase start is
    the temperature shift); ``lab`` ``silver/lab_results`` (first VCD = seed density);
    ``lots`` ``silver/material_lots`` (the site's incoming-QC result, else the supplier's)."""
    need = {"batch_id", "recipe_id", "status", "product_mass_kg", "start_ts", "duration_h"}
    missing = need - set(summary.columns)
    if missing:
        raise ValueError(f"batch summary lacks {sorted(missing)}")
    f = summary.filter(
        (pl.col("status") == "complete") & pl.col("product_mass_kg").is_not_null()
    ).select(
        "batch_id",
        "recipe_id",
        "product_mass_kg",
        "start_ts",
        *[c for c in ("media_lot", "feed_lot") if c in summary.columns],
        harvest_day=pl.col("duration_h") / 24.0,
    )
    if stats is not None and stats.height:
        for (tag, phase), name in SETPOINT_FEATURES.items():
            m = (
                stats.filter((pl.col("tag") == tag) & (pl.col("phase") == phase))
                .group_by("batch_id")
                .agg((pl.col("sum").sum() / pl.col("n").sum()).alias(name))
            )
            f = f.join(m, on="batch_id", how="left")
    if phases is not None and phases.height:
        shift = (
            phases.filter(pl.col("phase") == "production")
            .group_by("batch_id")
            .agg(pl.col("start_ts").min().alias("_shift_ts"))
        )
        f = f.join(shift, on="batch_id", how="left").with_columns(
            shift_day=(pl.col("_shift_ts") - pl.col("start_ts")).dt.total_seconds() / 86400.0
        )
        f = f.drop("_shift_ts")
    if lab is not None and lab.height:
        seed = (
            lab.filter(pl.col("analyte") == "viable_cell_density_e6_cells_ml")
            .sort("sample_ts")
            .group_by("batch_id")
            .agg(pl.col("value").first().alias(SEED_VCD))
        )
        f = f.join(seed, on="batch_id", how="left")
    if lots is not None and lots.height:
        for (material, attr), name in LOT_FEATURES.items():
            key = f"{material}_lot"
            if key not in f.columns:
                continue
            v = (
                lots.filter((pl.col("material") == material) & (pl.col("attribute") == attr))
                .with_columns(_rank=(pl.col("issuer") != "site_qc").cast(pl.Int8))
                .sort("_rank", "tested_ts")
                .group_by("lot_id")
                .agg(pl.col("value").first().alias(name))
            )
            f = f.join(v, left_on=key, right_on="lot_id", how="left")
    return f.drop("start_ts")


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Mean difference a - b and its 95 % Welch interval."""
    from scipy.stats import t as student_t  # lazy: the code location imports this module

    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    d = float(a.mean() - b.mean())
    se = math.sqrt(va + vb)
    if se == 0:
        return d, d, d
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    q = float(student_t.ppf(0.975, df))
    return d, d - q * se, d + q * se


def _hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = len(a), len(b)
    sp = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if sp == 0:
        return 0.0
    return float((a.mean() - b.mean()) / sp * (1 - 3 / (4 * (na + nb) - 9)))


def compare(
    features: pl.DataFrame,
    proposals: Mapping[str, Mapping[str, float]] | None = None,
    currents: Mapping[str, Mapping[str, float]] | None = None,
    top_share: float = TOP_SHARE,
) -> pl.DataFrame:
    """Per recipe and feature: the top ``top_share`` batches by product mass against the
    rest (`batch_features` rows), and where the optimiser's proposal (``proposals[recipe]``,
    decision name -> value) and the current recipe (``currents``) lie against them.

    Recipes with fewer than ``MIN_BATCHES`` completed batches get one row with a note and no
    statistics; a feature with fewer than two values in either group likewise."""
    from scipy.stats import spearmanr  # lazy: the code location imports this module

    if not 0 < top_share < 1:
        raise ValueError(f"top_share must be in (0, 1), got {top_share}")
    proposals, currents = proposals or {}, currents or {}
    cols = [c for c in FEATURE_KIND if c in features.columns]
    rows: list[dict[str, object]] = []
    for (rid,), g in features.group_by("recipe_id", maintain_order=True):
        rid = str(rid)
        base: dict[str, object] = {"recipe_id": rid, "batches": g.height}
        if g.height < MIN_BATCHES:
            rows.append(base | {"note": f"{g.height} completed batches, need {MIN_BATCHES}"})
            continue
        mass = g["product_mass_kg"].to_numpy().astype(float)
        n_top = max(2, math.ceil(top_share * g.height))
        order = np.argsort(-mass, kind="stable")
        top = np.zeros(g.height, bool)
        top[order[:n_top]] = True
        d_mass = _welch(mass[top], mass[~top])
        prop, cur = proposals.get(rid, {}), currents.get(rid, {})
        for c in cols:
            x = g[c].cast(pl.Float64).to_numpy()
            ok = np.isfinite(x)
            a, b = x[top & ok], x[~top & ok]
            r: dict[str, object] = base | {
                "feature": c,
                "kind": FEATURE_KIND[c],
                "n_top": len(a),
                "n_rest": len(b),
                "top_mean_product_kg": float(mass[top].mean()),
                "rest_mean_product_kg": float(mass[~top].mean()),
                "product_gap_kg_lo": d_mass[1],
                "product_gap_kg_hi": d_mass[2],
            }
            if len(a) < 2 or len(b) < 2:
                rows.append(r | {"note": "fewer than two values in a group"})
                continue
            d, lo, hi = _welch(a, b)
            rho = spearmanr(x[ok], mass[ok]).statistic if ok.sum() > 2 else math.nan
            r |= {
                "top_mean": float(a.mean()),
                "rest_mean": float(b.mean()),
                "top_p10": float(np.quantile(a, 0.1)),
                "top_p90": float(np.quantile(a, 0.9)),
                "history_min": float(x[ok].min()),
                "history_max": float(x[ok].max()),
                "diff": d,
                "diff_lo": lo,
                "diff_hi": hi,
                "hedges_g": _hedges_g(a, b),
                "spearman_with_product": float(rho),
                "significant": bool(lo > 0 or hi < 0),
            }
            if c in DECISIONS and c in prop:
                p = float(prop[c])
                r |= {
                    "current": float(cur[c]) if c in cur else None,
                    "proposed": p,
                    "proposed_pct_of_top": float((a < p).mean() * 100 + (a == p).mean() * 50),
                    "proposed_within_history": bool(x[ok].min() <= p <= x[ok].max()),
                }
                if c in cur and abs(p - float(cur[c])) > 1e-9:
                    same = (p - float(cur[c])) * d > 0
                    r["history_agrees"] = bool(r["significant"] and same)
                    r["history_contradicts"] = bool(r["significant"] and not same)
            rows.append(r)
    if not rows:
        return pl.DataFrame({"recipe_id": pl.Series([], dtype=pl.String)})
    clean = [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in rows
    ]
    return pl.DataFrame(clean, infer_schema_length=None)


def from_lake(
    lake: object,
    proposals: Mapping[str, Mapping[str, float]] | None = None,
    currents: Mapping[str, Mapping[str, float]] | None = None,
) -> pl.DataFrame:
    """`compare` on the lake's tables (``Lake``: gold/batch_summary and the silver tables
    above); an empty frame when there is no batch summary yet."""
    read = lake.read  # type: ignore[attr-defined]
    summary = read("gold", "batch_summary")
    if summary is None or summary.height == 0:
        return pl.DataFrame({"recipe_id": pl.Series([], dtype=pl.String)})
    feats = batch_features(
        summary,
        read("silver", "telemetry_stats"),
        read("silver", "batch_phases"),
        read("silver", "lab_results"),
        read("silver", "material_lots"),
    )
    return compare(feats, proposals, currents)


def proposals_from_table(recs: pl.DataFrame | None) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """(proposals, currents) per recipe from ``gold/recipe_recommendations`` rows
    (``recommended_<decision>``, ``current_<decision>``)."""
    prop: dict[str, dict[str, float]] = {}
    cur: dict[str, dict[str, float]] = {}
    if recs is None or recs.height == 0 or "recipe_id" not in recs.columns:
        return prop, cur
    for row in recs.iter_rows(named=True):
        rid = str(row["recipe_id"])
        prop[rid] = {
            k: float(row[f"recommended_{k}"]) for k in DECISIONS if f"recommended_{k}" in row
        }
        cur[rid] = {k: float(row[f"current_{k}"]) for k in DECISIONS if f"current_{k}" in row}
    return prop, cur
