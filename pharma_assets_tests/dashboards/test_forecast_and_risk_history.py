"""Issue 14 "Also": gold/batch_forecasts on the Batch quality page (forecast with its
interval against the actual), and the contamination risk history of any batch from both
gold/contamination_risk and gold/contamination_live on the monitoring page."""

from __future__ import annotations

import polars as pl

from pharma_assets.ml.quality import FORECAST_SCHEMA, targets_frame


def metrics(at) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {m.label: m.value for m in at.metric}


def test_batch_quality_shows_forecasts_with_interval_against_actual(app, lake_copy):
    summary = lake_copy.read("gold", "batch_summary")
    actual = targets_frame(summary).filter(pl.col("final_titer_g_l").is_not_null())
    assert actual.height >= 2
    a, b = actual.sort("batch_id").head(2).iter_rows(named=True)
    running = summary.filter(pl.col("status") == "running")["batch_id"][0]
    rows = [  # a: actual inside its interval; b: outside; the running batch: no actual yet
        (
            a["batch_id"],
            a["final_titer_g_l"],
            a["final_titer_g_l"] - 0.5,
            a["final_titer_g_l"] + 0.5,
        ),
        (
            b["batch_id"],
            b["final_titer_g_l"] + 2.0,
            b["final_titer_g_l"] + 1.0,
            b["final_titer_g_l"] + 3.0,
        ),
        (running, 3.0, 2.5, 3.5),
    ]
    fc = pl.DataFrame(
        [
            {
                "batch_id": bid,
                "unit_id": "BR01",
                "as_of_ts": None,
                "elapsed_h": 168.0,
                "horizon": "day7",
                "target": "final_titer_g_l",
                "predicted": p,
                "lower": lo,
                "upper": hi,
                "unit": "g/L",
                "model_name": "pharma_quality_final_titer_g_l_day7",
                "model_version": "1",
            }
            for bid, p, lo, hi in rows
        ],
        schema=FORECAST_SCHEMA,
    )
    lake_copy.overwrite("gold", "batch_forecasts", fc)
    at = app(lake_copy.root, "batch_quality")
    m = metrics(at)
    assert m["Batches forecast"] == "3"
    assert m["With an actual value"] == "2"
    assert m["Actual inside the 80 % interval"] == "1 / 2"
    table = next(d.value for d in at.dataframe if "predicted" in d.value.columns)
    assert set(table["batch_id"]) == {a["batch_id"], b["batch_id"], running}
    got = dict(zip(table["batch_id"], table["actual"], strict=True))
    assert abs(got[a["batch_id"]] - a["final_titer_g_l"]) < 1e-9
    assert got[running] != got[running]  # NaN: no actual while it runs


def test_batch_quality_says_when_no_forecast_exists(app, fixture_lake):
    at = app(fixture_lake.root, "batch_quality")
    assert any("gold/batch_forecasts" in i.value for i in at.info)


def test_monitoring_shows_risk_history_from_batch_and_live_tables(app, lake_copy):
    cr = lake_copy.read("gold", "contamination_risk")
    bid = sorted(cr["batch_id"].unique().to_list())[0]
    mine = cr.filter(pl.col("batch_id") == bid)
    last = mine.filter(pl.col("window_end_ts") == pl.col("window_end_ts").max())
    live = pl.concat(
        [
            last.with_columns(
                window_end_ts=pl.col("window_end_ts") + pl.duration(minutes=5 * k),
                elapsed_h=pl.col("elapsed_h") + 5 * k / 60,
                alarm=pl.lit(k == 2),
            )
            for k in (1, 2)
        ]
    )
    lake_copy.append("gold", "contamination_live", live)
    at = app(lake_copy.root, "monitoring")
    at.selectbox(key="mon_contam_batch").select(bid).run()
    assert not at.exception
    m = metrics(at)
    assert m["Windows scored"] == str(mine.height + 2)
    assert m["From the retraining (gold/contamination_risk)"] == str(mine.height)
    assert m["From live scoring (gold/contamination_live)"] == "2"
    assert m["Alarm windows"] == str(int(mine["alarm"].sum()) + 1)
