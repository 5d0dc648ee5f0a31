"""The engine setting reaches Dagster: the lakehouse resource, the Spark job, the pins."""

from __future__ import annotations

import pytest

from pharma_assets.defs.lakehouse.definitions import defs as lakehouse_defs
from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.engines.spark.session import spark_conf


def test_engine_and_master_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHARMA_ENGINE", raising=False)
    monkeypatch.delenv("PHARMA_SPARK_MASTER", raising=False)
    res = LakehouseResource.from_env()
    assert res.engine == "polars" and not res.uses_spark
    monkeypatch.setenv("PHARMA_ENGINE", "spark")
    monkeypatch.setenv("PHARMA_SPARK_MASTER", "spark://10.0.0.5:7077")
    res = LakehouseResource.from_env()
    assert res.uses_spark and res.spark_master == "spark://10.0.0.5:7077"
    conf = spark_conf(res.spark_master, env={})
    assert conf["spark.master"] == "spark://10.0.0.5:7077"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.speculation"] == "false"  # no two copies of a task appending at once
    assert "spark.driver.bindAddress" not in conf  # loopback binding only for local masters
    assert spark_conf(None, env={})["spark.driver.bindAddress"] == "127.0.0.1"
    monkeypatch.setenv("PHARMA_ENGINE", "duckdb")
    with pytest.raises(ValueError, match="PHARMA_ENGINE='duckdb' is not an engine"):
        LakehouseResource.from_env()


def test_spark_backfill_job_is_defined() -> None:
    d = lakehouse_defs()
    job = d.resolve_job_def("spark_backfill_job")
    assert [n.name for n in job.nodes] == ["spark_backfill"]
    assert "lakehouse" in (d.resources or {})


def test_column_schemas_come_from_the_pandera_contracts() -> None:
    import dagster as dg

    from pharma_assets.defs.lakehouse.schemas import column_schema_metadata
    from pharma_assets.lake.specs import load_spec

    spec = load_spec()
    tel = column_schema_metadata("telemetry", spec)["dagster/column_schema"]
    assert isinstance(tel, dg.TableSchema)
    cols = {c.name: c for c in tel.columns}
    assert set(cols) == {"ts", "unit_id", "batch_id", "tag", "value", "uom"}  # no internal _key
    assert any(sorted(spec.tags)[0] in o for o in cols["tag"].constraints.other)
    assert "one reading per (unit, tag, ts) in the batch" in tel.constraints.other
    q = column_schema_metadata("telemetry_quarantine", spec)["dagster/column_schema"]
    assert "value is a finite number" in q.constraints.other
    assert column_schema_metadata("batch_timeline", spec) == {}
