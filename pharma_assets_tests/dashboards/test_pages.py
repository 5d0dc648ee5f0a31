"""Every dashboard page runs on the fixture lake (AppTest) and shows the numbers that the
fixture tables give when computed independently here with polars."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import polars as pl
import pytest

from pharma_assets.lake.specs import load_spec
from pharma_assets.lake.storage import Lake

from .conftest import ML_GOLD, add_users

PAGES = ("overview", "bioreactor", "batch_quality", "equipment", "monitoring", "models")


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def n_charts(at) -> int:
    return len(at.get("plotly_chart"))


@pytest.mark.parametrize("page", PAGES)
def test_every_table_has_a_csv_download_and_every_page_a_chart(app, fixture_lake, page):
    at = app(fixture_lake.root, page)
    assert at.title[0].value
    assert n_charts(at) >= 1
    downloads = at.get("download_button")
    assert len(at.dataframe) >= 1
    assert len(downloads) == len(at.dataframe)


def test_overview_counts(app, fixture_lake):
    at = app(fixture_lake.root)
    us = fixture_lake.read("gold", "unit_status")
    bs = fixture_lake.read("gold", "batch_summary")
    n_running = us.filter(pl.col("state") == "running").height
    assert n_running == 1  # the fixture keeps BR01 running and BR02 idle
    m = metrics(at)
    assert m["Running units"] == f"{n_running} / {us.height}"
    assert m["Batches"] == str(bs.height)
    assert m["Aborted"] == str(bs.filter(pl.col("status") == "aborted").height)
    done = bs.filter(pl.col("status") == "complete")
    assert m["Mean titer (complete)"] == f"{done['final_titer_g_l'].mean():.2f} g/L"

    units = at.dataframe[0].value
    assert list(units["unit_id"]) == sorted(us["unit_id"].to_list())
    assert list(units["state"]) == us.sort("unit_id")["state"].to_list()
    running = units[units["state"] == "running"]
    assert list(running["current_batch_id"]) == ["BR01-B0004"]
    assert float(running["day"].iloc[0]) == pytest.approx(
        us.filter(pl.col("state") == "running")["day"][0], abs=0.01
    )
    # alarms: equipment items whose latest scored hour is in alarm, per unit
    eh = fixture_lake.read("gold", "equipment_health")
    latest = eh.filter(pl.col("hour_ts") == pl.col("hour_ts").max().over("equipment_id"))
    eq_alarms = latest.filter(pl.col("alarm")).group_by("unit_id").len()
    cr = fixture_lake.read("gold", "contamination_risk")
    cr_now = cr.filter(pl.col("window_end_ts") == pl.col("window_end_ts").max().over("batch_id"))
    ms = fixture_lake.read("gold", "mspc_scores")
    ms_now = ms.filter(pl.col("elapsed_h") == pl.col("elapsed_h").max().over("batch_id"))
    for row in units.itertuples():
        expected = eq_alarms.filter(pl.col("unit_id") == row.unit_id)["len"].sum()
        if row.current_batch_id:
            expected += cr_now.filter(pl.col("batch_id") == row.current_batch_id)["alarm"].sum()
            expected += ms_now.filter(pl.col("batch_id") == row.current_batch_id)["alarm"].sum()
        assert row.active_alarms == expected, row

    kpis = at.dataframe[1].value
    gk = fixture_lake.read("gold", "plant_kpis")
    # batches per week, from batch_summary directly
    per_week = (
        bs.with_columns(w=pl.col("start_ts").dt.truncate("1w").dt.date())
        .group_by("w")
        .len()
        .sort("w")
    )
    assert (
        list(kpis["batches_started"])
        == per_week["len"].to_list()
        == gk["batches_started"].to_list()
    )
    assert sum(kpis["batches_started"]) == bs.height


def test_bioreactor_running_batch(app, fixture_lake):
    at = app(fixture_lake.root, "bioreactor")
    assert at.selectbox(key="br_unit").value == "BR01"
    assert at.selectbox(key="br_batch").value == "BR01-B0004"  # newest first: the running one
    tl = fixture_lake.read(
        "silver", "batch_timeline", filter_expr=pl.col("batch_id") == "BR01-B0004"
    )
    last_h = tl["elapsed_min"].max() / 60
    m = metrics(at)
    assert m["Status"] == f"running, {last_h / 24:.2f} days"
    assert m["Hours of data"] == f"{last_h:.1f} h"
    spec = load_spec()
    # one chart per CPP plus the lab chart
    assert n_charts(at) == len(spec.cpp_tags) + 1


def test_bioreactor_finished_batch_with_excursions(app, fixture_lake):
    exc = fixture_lake.read("gold", "cpp_excursions")
    batch = exc.group_by("batch_id").len().sort("len", descending=True)["batch_id"][0]
    unit = batch[:4]
    at = app(fixture_lake.root, "bioreactor")
    at.selectbox(key="br_unit").set_value(unit).run()
    at.selectbox(key="br_batch").set_value(batch).run()
    assert not at.exception
    assert metrics(at)["CPP excursions"] == str(exc.filter(pl.col("batch_id") == batch).height)
    shown = at.dataframe[-1].value  # the excursion table is the last one
    assert sorted(shown["excursion_id"]) == sorted(
        exc.filter(pl.col("batch_id") == batch)["excursion_id"].to_list()
    )
    labs = at.dataframe[0].value
    assert (
        len(labs)
        == fixture_lake.read(
            "silver", "lab_results", filter_expr=pl.col("batch_id") == batch
        ).height
    )


def test_batch_quality_numbers(app, fixture_lake):
    at = app(fixture_lake.root, "batch_quality")
    bs = fixture_lake.read("gold", "batch_summary")
    done = bs.filter(pl.col("status") == "complete")
    titer = done["final_titer_g_l"]
    mean, sd = titer.mean(), titer.std()
    m = metrics(at)
    assert at.selectbox(key="bq_metric").value == "final_titer_g_l"
    assert m["Mean"] == f"{mean:.4g}"
    assert m["LCL (mean − 3σ)"] == f"{mean - 3 * sd:.4g}"
    assert m["UCL (mean + 3σ)"] == f"{mean + 3 * sd:.4g}"

    cpk = next(d.value for d in at.dataframe if "mean_cpk" in d.value.columns)
    for tag in ("ph", "temperature_c"):
        expected = done[f"cpk_{tag}"].drop_nulls().mean()
        got = float(cpk.loc[cpk["cpp"] == tag, "mean_cpk"].iloc[0])
        assert got == pytest.approx(expected, rel=1e-12)

    compare = next(d.value for d in at.dataframe if "attribute" in d.value.columns)
    last_two = done.sort("start_ts")["batch_id"].to_list()[-2:]
    assert list(compare.columns) == ["attribute", *last_two]
    titer_row = compare[compare["attribute"] == "final_titer_g_l"].iloc[0]
    for b in last_two:
        v = done.filter(pl.col("batch_id") == b)["final_titer_g_l"][0]
        assert titer_row[b] == f"{v:.4g}"
    lots = next(
        d.value
        for d in at.dataframe
        if "media_lot" in d.value.columns and len(d.value.columns) == 6
    )
    assert sorted(lots["batch_id"]) == sorted(last_two)
    assert set(lots["inoculum_lot"]) == {f"INO-{b}" for b in last_two}


def test_equipment_schedule_by_risk(app, fixture_lake):
    at = app(fixture_lake.root, "equipment")
    eh = fixture_lake.read("gold", "equipment_health")
    latest = eh.filter(pl.col("hour_ts") == pl.col("hour_ts").max().over("equipment_id"))
    top = latest.sort("failure_probability", descending=True).row(0, named=True)
    m = metrics(at)
    assert m["Items monitored"] == str(eh["equipment_id"].n_unique())
    assert m["Highest risk"] == top["equipment_id"]
    assert m["Its failure probability (72 h)"] == f"{top['failure_probability']:.1%}"
    assert m["In alarm"] == str(latest["alarm"].sum())
    sched = at.dataframe[0].value
    assert (
        list(sched["equipment_id"])
        == latest.sort("failure_probability", descending=True)["equipment_id"].to_list()
    )
    assert list(sched["priority"]) == list(range(1, len(sched) + 1))
    trend = at.dataframe[1].value
    first = at.selectbox(key="eq_item").value
    # every scored hour is in the trend (bucketed beyond 1,000 points), nothing dropped
    assert trend["hours"].sum() == eh.filter(pl.col("equipment_id") == first).height


def test_monitoring_numbers(app, fixture_lake):
    at = app(fixture_lake.root, "monitoring")
    cr = fixture_lake.read("gold", "contamination_risk")
    now = cr.filter(pl.col("window_end_ts") == pl.col("window_end_ts").max().over("batch_id"))
    m = metrics(at)
    running = fixture_lake.read("silver", "batches").filter(pl.col("status") == "running")
    now = now.filter(pl.col("batch_id").is_in(running["batch_id"].to_list()))
    assert m["Running batches"] == str(running.height)
    assert m["Running batches scored"] == str(now.height)
    assert m["In alarm now"] == str(now["alarm"].sum())
    assert m["Highest risk now"] == f"{100 * now['risk'].max():.1f} %"
    batch = at.selectbox(key="mon_batch").value
    assert batch == "BR01-B0004"  # running batches first
    al = fixture_lake.read("gold", "mspc_alarms").filter(pl.col("batch_id") == batch)
    shown = at.dataframe[-1].value
    assert len(shown) == al.height > 0
    # the top contributor table: mean share over the batch's alarm hours
    sc = fixture_lake.read("gold", "mspc_scores").filter(
        (pl.col("batch_id") == batch) & pl.col("alarm")
    )
    shares: dict[str, float] = {}
    for s in sc["top_contributors"]:
        for part in s.split(","):
            tag, share = part.rsplit(":", 1)
            shares[tag] = shares.get(tag, 0.0) + float(share)
    best = max(shares, key=lambda t: (shares[t], t))
    top = at.dataframe[1].value
    assert top["tag"].iloc[0] == best
    assert float(top["mean_share"].iloc[0]) == pytest.approx(shares[best] / sc.height)


def test_models_from_gold_when_registry_is_empty(app, fixture_lake):
    at = app(fixture_lake.root, "models")
    mp = fixture_lake.read("gold", "model_performance")
    champ = mp.filter(pl.col("is_champion") & pl.col("target").is_not_null())
    m = metrics(at)
    assert m["Models"] == str(mp["model_name"].n_unique())
    assert m["Targets met by champions"] == f"{champ['target_met'].sum()} / {champ.height}"
    captions = " ".join(c.value for c in at.caption)
    assert "gold/model_performance" in captions
    overview = at.dataframe[0].value
    row = overview[overview["model_name"] == "pharma_quality_final_titer_g_l_day7"].iloc[0]
    assert row["champion_version"] == "2" and row["versions"] == "1, 2"


def test_models_lists_the_mlflow_registry(app, fixture_lake, tmp_path, monkeypatch):
    registry = pytest.importorskip("pharma_assets.ml.registry")
    uri = f"sqlite:///{tmp_path / 'reg' / 'mlflow.db'}"
    for score in (0.7, 0.8):
        registry.register(
            registry.TrainedModel(
                name="pharma_pdm_failure_72h",
                model={"w": score},
                params={"depth": 3},
                features=["vibration"],
                data_versions={"gold/equipment_health": 0},
                metrics={"recall": score},
                gate_metric="recall",
                higher_is_better=True,
                evaluation_set="holdout:test",
                n_eval=10,
                targets={"recall": 0.8},
            ),
            champion_score_fn=(lambda _m: 0.7) if score == 0.8 else None,
            uri=uri,
        )
    monkeypatch.setenv("PHARMA_MLFLOW_URI", uri)
    at = app(fixture_lake.root, "models")  # the env var set here wins over the fixture's
    assert not at.exception
    reg = at.dataframe[0].value
    expected = registry.list_models(uri)
    assert list(reg["version"]) == expected["version"].to_list() == ["1", "2"]
    assert list(reg["is_champion"]) == expected["is_champion"].to_list()
    assert "MLflow model registry" in " ".join(c.value for c in at.caption)


@pytest.mark.parametrize("page", PAGES)
def test_missing_lake_says_what_to_run(app, tmp_path, page):
    add_users(Lake.at(tmp_path / "no_lake"))  # only the accounts: no plant table yet
    at = app(tmp_path / "no_lake", page)
    text = " ".join(i.value for i in at.info)
    assert "make demo" in text and "pharma-twin import" in text, text


@pytest.mark.parametrize("page", ("equipment", "monitoring", "models"))
def test_ml_tables_missing_say_not_trained(app, lake_copy, page):
    for t in ML_GOLD:
        shutil.rmtree(f"{lake_copy.root}/gold/{t}")
    at = app(lake_copy.root, page)
    text = " ".join(i.value for i in at.info)
    assert "not trained" in text and "make demo" in text and "pharma-twin train" in text, text
    assert "which models the data supports" in text, text


def test_new_materialization_shows_without_restart(app, lake_copy):
    at = app(lake_copy.root)
    assert metrics(at)["Running units"] == "1 / 2"
    us = lake_copy.read("gold", "unit_status")
    lake_copy.overwrite(
        "gold",
        "unit_status",
        us.with_columns(
            state=pl.lit("running"),
            current_batch_id=pl.coalesce("current_batch_id", pl.lit("BR02-B9999")),
            updated_at=pl.lit(datetime.now(UTC)).cast(us.schema["updated_at"]),
        ),
    )
    at.run()  # same session, same process: the cache is keyed by the table version
    assert not at.exception
    assert metrics(at)["Running units"] == "2 / 2"


def test_monitoring_shows_the_live_score_when_it_is_newer(app, lake_copy):
    """gold/contamination_live (5-minute scoring) wins over the retraining's table."""
    cr = lake_copy.read("gold", "contamination_risk")
    latest = cr.filter(pl.col("window_end_ts") == pl.col("window_end_ts").max().over("batch_id"))
    row = (
        latest.sort("batch_id")
        .head(1)
        .with_columns(
            window_end_ts=pl.col("window_end_ts") + pl.duration(minutes=5),
            risk=pl.lit(0.987654),
            alarm=pl.lit(True),
        )
    )
    lake_copy.append("gold", "contamination_live", row)
    at = app(lake_copy.root, "monitoring")
    m = metrics(at)
    assert m["Running batches scored"] == str(cr["batch_id"].n_unique())
    assert m["Highest risk now"] == "98.8 %"
