"""The Spark engine gives the same lake as the polars engine (Spark in local mode).

One Spark session for the module, in ONE test (pytest-xdist spreads tests over workers and
each would start its own JVM): the same landing zone goes through both engines into two
lakes, and every bronze and silver table is compared row for row (the columns that name
the run or its clock aside); a second Spark backfill changes nothing (exactly once); the
minute timeline rebuilt in Spark SQL and the ML timeline products computed on Spark's
executors equal the polars ones.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pharma_assets.engines import engine_from_env
from pharma_assets.engines import polars as polars_engine
from pharma_assets.engines.spark.lake_io import writer_from_env
from pharma_assets.lake.landing_scan import scan_landing
from pharma_assets.lake.specs import load_spec
from pharma_assets.lake.storage import Lake
from pharma_assets.ml import features
from pharma_assets.twin.config import load_plant, load_recipes
from pharma_assets.twin.history import simulate_history

# what differs between two ingestions of the same files by construction: who and when
RUN_COLUMNS = {"ingested_at", "ingest_run_id", "processed_at", "run_id", "started_at"}


def test_engine_setting() -> None:
    assert engine_from_env({}) == "polars"
    assert engine_from_env({"PHARMA_ENGINE": "Spark"}) == "spark"
    with pytest.raises(ValueError, match="PHARMA_ENGINE='dask' is not an engine"):
        engine_from_env({"PHARMA_ENGINE": "dask"})
    assert writer_from_env({}) == "delta-rs"
    with pytest.raises(ValueError, match="not a writer"):
        writer_from_env({"PHARMA_SPARK_DELTA_WRITER": "hive"})


def _tables(lake: Lake, layer: str) -> list[str]:
    return sorted(
        p.name for p in (Path(lake.root) / layer).iterdir() if (p / "_delta_log").is_dir()
    )


def _same(got: pl.DataFrame, want: pl.DataFrame, what: str) -> None:
    try:
        assert_frame_equal(_canonical(got), _canonical(want), check_column_order=False)
    except AssertionError as e:
        raise AssertionError(f"{what}: {e}") from None


def _canonical(df: pl.DataFrame) -> pl.DataFrame:
    df = df.drop([c for c in df.columns if c in RUN_COLUMNS])
    df = df.select(sorted(df.columns))
    return df.sort(df.columns, nulls_last=True)


@pytest.mark.spark
@pytest.mark.slow
def test_spark_engine_matches_polars(tmp_path: Path) -> None:
    from pharma_assets.engines.spark import backfill, transforms
    from pharma_assets.engines.spark.session import build_session

    landing = tmp_path / "landing"
    simulate_history(
        load_plant().with_units(2),
        load_recipes(),
        3,
        seed=5,
        out=landing,
        truth_out=tmp_path / "truth",
    )
    ids = sorted({f.batch_id for f in scan_landing(landing) if f.batch_id})
    assert len(ids) >= 3
    ref = Lake.at(tmp_path / "polars")
    polars_engine.backfill(ref, landing, "polars-run")

    spark = build_session("local[2]")
    try:
        got = Lake.at(tmp_path / "spark")
        rep = backfill.backfill(spark, got.root, str(landing), ids, "spark-run", batches_per_task=1)
        assert rep.tasks == len(ids)
        assert (
            rep.silver["rows_in"] == rep.silver["rows_valid"] + rep.silver["rows_quarantined"] > 0
        )

        # every bronze and silver table: the same tables, the same rows
        for layer in ("bronze", "silver"):
            assert _tables(got, layer) == _tables(ref, layer), layer
            for name in _tables(ref, layer):
                a, b = ref.read(layer, name), got.read(layer, name)
                assert a is not None and b is not None
                assert a.height == b.height, f"{layer}/{name}: {a.height} vs {b.height} rows"
                _same(b, a, f"{layer}/{name}")

        # exactly once: a second backfill of the same batches commits nothing
        versions = {
            (ly, n): got.version(ly, n) for ly in ("bronze", "silver") for n in _tables(got, ly)
        }
        again = backfill.backfill(
            spark, got.root, str(landing), ids, "spark-rerun", batches_per_task=2
        )
        assert again.bronze["telemetry"]["files_accepted"] == 0
        assert again.silver.get("files_processed", 0) == 0
        for (ly, n), v in versions.items():
            if (ly, n) not in {
                ("silver", "batches"),
                ("silver", "batch_phases"),
                ("silver", "event_quarantine"),
                ("silver", "lab_results"),
                ("silver", "lab_quarantine"),
                ("silver", "maintenance_events"),
            }:
                assert got.version(ly, n) == v, f"{ly}/{n} changed on a rerun"
        again_tel, ref_tel = got.read("silver", "telemetry"), ref.read("silver", "telemetry")
        assert again_tel is not None and ref_tel is not None
        _same(again_tel, ref_tel, "silver/telemetry after a rerun")

        # the minute timeline in Spark SQL = silver/batch_timeline of the polars engine
        tl = transforms.minute_timeline_frame(spark, ref, load_spec())
        want = ref.read("silver", "batch_timeline")
        assert want is not None and want.height > 0
        _same(tl, want, "minute timeline")

        # the ML timeline products on Spark's executors = the polars ones
        sp = transforms.timeline_products(spark, ref)
        pp = features.timeline_products(ref)
        assert sp.n_batches == pp.n_batches == len(ids)
        for name in transforms.PRODUCTS:
            assert getattr(pp, name).height > 0, name
            _same(getattr(sp, name), getattr(pp, name), f"timeline product {name}")

        # Spark's own Delta writer is a switch for clusters with the jars; here it says so
        from pharma_assets.engines.spark.lake_io import write_table

        with pytest.raises(RuntimeError, match="needs Delta's Spark jars"):
            write_table(got, "scratch", "t", spark.range(3), writer="spark")
    finally:
        spark.stop()
