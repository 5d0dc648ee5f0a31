"""The What-if & optimisation page (AppTest): a scenario on the running batch in the same
run, its CQAs against spec, saving it, the sensitivity/design-space/recipe sections once
their tables exist, and the recipe change request through the signature dialog."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from pharma_assets.compliance import recipe_requests
from pharma_assets.optimise import history, sensitivity
from pharma_assets.optimise import recipe as ro
from pharma_assets.twin import config as twin_config


def test_scenario_on_the_running_batch(app, fixture_lake):
    at = app(fixture_lake.root, "whatif")
    assert at.title[0].value == "What-if & optimisation"
    running = fixture_lake.read("silver", "batches").filter(pl.col("status") == "running")
    assert at.selectbox(key="wif_batch").value == running["batch_id"][0]
    assert len(at.get("plotly_chart")) >= 2
    cqas = at.dataframe[0].value
    assert "product_mass_kg" in list(cqas["cqa"]) and "aggregates_hmw_pct" in list(cqas["cqa"])
    # no change: scenario == baseline exactly
    assert (cqas["scenario_median"] == cqas["baseline_median"]).all()
    at.slider(key="wif_harvest").set_value(at.slider(key="wif_harvest").value + 1.0).run()
    assert not at.exception
    cqas = at.dataframe[0].value
    pm = cqas[cqas["cqa"] == "product_mass_kg"].iloc[0]
    assert pm["scenario_median"] != pm["baseline_median"]
    text = " ".join(i.value for i in at.info)
    assert "not computed yet" in text and "No recipe recommendation yet" in text
    assert not [b for b in at.button if b.label == "Save scenario"]  # the viewer cannot save


def test_save_sections_and_recipe_change_request(app, lake_copy, tmp_path, monkeypatch):
    recipes = tmp_path / "recipes.yaml"
    shutil.copy(Path(twin_config.__file__).parent / "config" / "recipes_default.yaml", recipes)
    monkeypatch.setenv("PHARMA_RECIPES_PATH", str(recipes))
    fb14 = twin_config.load_recipes(recipes).get("MAB-A-FB14")
    opt = ro.optimise(fb14, n_trials=16, train_seeds=range(8))
    ver = ro.verify(fb14, opt.best.settings, n_batches=3, train_seeds=range(8))
    lake_copy.overwrite(
        "gold", "recipe_recommendations", pl.DataFrame([ro.recommendation_record(opt, ver)])
    )
    sob = sensitivity.sobol(fb14, n_base=32, n_boot=20)
    lake_copy.overwrite("gold", "twin_sensitivity", sob)
    lake_copy.overwrite(
        "gold",
        "design_space",
        sensitivity.design_space(fb14, ("ph_sp", "T_prod"), n_grid=4, seeds=range(6)),
    )
    # the history comparison of this lake's batches against the recommendation
    prop, cur = history.proposals_from_table(lake_copy.read("gold", "recipe_recommendations"))
    hist_t = history.from_lake(lake_copy, prop, cur)
    lake_copy.overwrite("gold", "history_patterns", hist_t)
    at = app(lake_copy.root, "whatif", user="qa.lead")
    assert len(at.get("plotly_chart")) >= 4  # trajectories, tornado, design space
    assert any("Learning from history" in str(h.value) for h in at.subheader)
    assert hist_t.height >= 1
    if "feature" in hist_t.columns and hist_t["feature"].drop_nulls().len():
        assert any("top quarter" in str(c.value) for c in at.caption)
    else:  # a small fixture lake: the page says why there is no comparison
        assert any("need 8" in str(i.value) for i in at.info)
    assert not at.exception
    at.button(key="wif_save").click().run()
    saved = lake_copy.read("gold", "whatif_scenarios")
    assert saved is not None and saved["created_by"].to_list() == ["qa.lead"]
    at.button(key="open_wif_request").click().run()
    at.text_input(key="sig_user_wif_request").input("qa.lead")
    at.text_input(key="sig_pw_wif_request").input("Quality-pass-2026")
    at.text_input(key="sig_reason_wif_request").input("adopt the verified recipe")
    next(b for b in at.button if b.label == "Sign").click().run()
    assert not at.exception
    pend = recipe_requests.pending(lake_copy)
    assert pend.height == 1 and pend["to_version"][0] == fb14.version + 1
    assert twin_config.load_recipes(recipes).get("MAB-A-FB14").version == fb14.version  # unchanged
