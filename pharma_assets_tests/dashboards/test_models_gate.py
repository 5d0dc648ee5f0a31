"""The Models page says why a model is not champion (the promotion gate's reason, read from
the MLflow version tags), with a real SQLite MLflow store and the dashboards' fixture lake."""

from __future__ import annotations

from pharma_assets.ml import registry


def _trained(r2: float, name: str) -> registry.TrainedModel:
    return registry.TrainedModel(
        name=name,
        model={"r2": r2},
        params={},
        features=["f"],
        data_versions={},
        metrics={"r2": r2, "mae": 1.0, "baseline_mae": 1.2, "baseline_r2": -0.01},
        gate_metric="r2",
        higher_is_better=True,
        evaluation_set="holdout: test",
        n_eval=12,
        minimum=registry.Minimum("regressor"),
    )


def test_models_page_shows_why_a_model_is_not_champion(app, fixture_lake, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'reg' / 'mlflow.db'}"
    neg = registry.register(_trained(-0.57, "pharma_quality_aggregates_pct_day3"), None, uri=uri)
    assert not neg.promoted
    registry.register(_trained(0.6, "pharma_quality_final_titer_g_l_day7"), None, uri=uri)
    registry.set_champion("pharma_quality_final_titer_g_l_day7", "1", uri)
    worse = registry.register(
        _trained(0.4, "pharma_quality_final_titer_g_l_day7"), lambda _m: 0.6, uri=uri
    )
    assert worse.promotion_decision == registry.KEPT_CHAMPION
    monkeypatch.setenv("PHARMA_MLFLOW_URI", uri)
    at = app(fixture_lake.root, "models")

    warnings = [w.value for w in at.warning]
    agg = [w for w in warnings if "pharma_quality_aggregates_pct_day3" in w]
    assert len(agg) == 1, warnings
    assert "v1 not promoted (no champion: nothing is scored)" in agg[0]
    assert "R² -0.570 <= 0" in agg[0] and neg.promotion_reason in agg[0]
    titer = [w for w in warnings if "final_titer_g_l_day7" in w]
    assert len(titer) == 1 and "v2 not promoted (champion stays v1)" in titer[0]
    assert "r2 0.4 not >= champion v1 0.6" in titer[0]

    table = at.dataframe[0].value
    row = table[table["name"] == "pharma_quality_aggregates_pct_day3"].iloc[0]
    assert row["promotion_decision"] == registry.NOT_PROMOTED
    assert not row["is_champion"]


def test_models_page_all_champions_says_so(app, fixture_lake, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'reg' / 'mlflow.db'}"
    assert registry.register(_trained(0.7, "pharma_quality_x"), None, uri=uri).proposed
    registry.set_champion("pharma_quality_x", "1", uri)
    monkeypatch.setenv("PHARMA_MLFLOW_URI", uri)
    at = app(fixture_lake.root, "models")
    # (a stale-data warning of the fixture's running batch may show; no gate warning)
    assert not [w for w in at.warning if w.icon == ":material/block:"]
    assert "The newest version of every model is its champion." in [c.value for c in at.caption]
