"""Where the lake and the landing zone are, per environment.

local (default): ``PHARMA_LAKE_URI`` (default ``./lakehouse``), ``PHARMA_LANDING_DIR``
(default ``./landing``). production: ``PHARMA_LAKE_URI=s3://bucket/prefix`` (or az://,
gs://) with the object-store credentials in the usual ``AWS_*``/``AZURE_*``/``GOOGLE_*``
variables; see docs/deployment_guide.md.

Engine: ``PHARMA_ENGINE=polars`` (default) or ``spark`` for the bulk/backfill path and the
ML timeline products; Spark's master from ``PHARMA_SPARK_MASTER`` (``local[2]`` by default,
``spark://host:7077`` for a standalone cluster, ``k8s://https://...`` on Kubernetes;
docs/scaling.md). The session comes from dagster-pyspark's ``LazyPySparkResource``, so a
run that does not use Spark never starts a JVM.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from pharma_assets.engines import engine_from_env
from pharma_assets.engines.spark.session import prepare_env, spark_conf
from pharma_assets.lake.specs import CppSpec, load_spec
from pharma_assets.lake.storage import DEFAULT_LAKE_URI, Lake, lake_uri_from_env


class LakehouseResource(dg.ConfigurableResource):
    """The lake root, the landing folder and the CPP spec file the pipeline uses."""

    lake_uri: str = DEFAULT_LAKE_URI
    landing_dir: str = "landing"
    spec_path: str | None = None
    engine: str = "polars"
    spark_master: str | None = None
    _pyspark: Any = PrivateAttr(default=None)

    @classmethod
    def from_env(cls) -> LakehouseResource:
        return cls(
            lake_uri=lake_uri_from_env(),
            landing_dir=os.environ.get("PHARMA_LANDING_DIR", "landing"),
            spec_path=os.environ.get("PHARMA_CPP_SPEC") or None,
            engine=engine_from_env(),
            spark_master=os.environ.get("PHARMA_SPARK_MASTER") or None,
        )

    @property
    def uses_spark(self) -> bool:
        return engine_from_env({"PHARMA_ENGINE": self.engine}) == "spark"

    def spark_session(self) -> Any:
        """The Spark session of this environment, started on first use."""
        if self._pyspark is None:
            from dagster_pyspark import LazyPySparkResource  # pyspark: only when Spark is used

            prepare_env()
            self._pyspark = LazyPySparkResource(spark_config=spark_conf(self.spark_master))
        return self._pyspark.spark_session

    def lake(self) -> Lake:
        return Lake.from_env(self.lake_uri)

    def spec(self) -> CppSpec:
        # with the unit class's other tags and the site tags the importer declared
        return load_spec(self.spec_path, landing=self.landing_dir)
