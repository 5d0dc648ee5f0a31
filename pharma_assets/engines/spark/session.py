"""The Spark session settings the engine needs, per environment.

Local (default): ``local[N]`` in this process's JVM. Production: a standalone master
(``spark://host:7077``) or Kubernetes (``k8s://https://...``) with the same settings; the
master comes from ``PHARMA_SPARK_MASTER``. Executors must reach the lake and the landing
zone at the same paths as the driver (an object-store lake, a shared landing mount).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[2]"


def spark_conf(
    master: str | None = None,
    env: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings every session of the engine gets (``spark_config`` of PySparkResource).

    UTC session time zone and microsecond timestamps (the lake's one timestamp type), Arrow
    transfers, the driver's Python for the workers, small shuffles (the work is split by
    batch, not by shuffle partitions) and 127.0.0.1 binding when the master is local.
    """
    env = os.environ if env is None else env
    master = master or env.get("PHARMA_SPARK_MASTER") or DEFAULT_MASTER
    conf: dict[str, Any] = {
        "spark.master": master,
        "spark.app.name": "pharma-twin",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": env.get("PHARMA_SPARK_SHUFFLE_PARTITIONS", "8"),
        "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.ui.enabled": "false",
        # a task's lake writes are exactly once through the lake's rules (a retried task
        # completes what is missing), but two copies of one task at the same time on an
        # object-store lake (no file locks there) could both append: no speculation
        "spark.speculation": "false",
        "spark.driver.memory": env.get("PHARMA_SPARK_DRIVER_MEMORY", "1g"),
        "spark.executor.memory": env.get("PHARMA_SPARK_EXECUTOR_MEMORY", "1g"),
    }
    if master.startswith("local") or "127.0.0.1" in master or "localhost" in master:
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    conf.update(extra or {})
    return conf


def prepare_env() -> None:
    """Process environment Spark reads before its JVM starts (bind to loopback by default)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def build_session(
    master: str | None = None, extra: Mapping[str, Any] | None = None
) -> SparkSession:
    """A session with ``spark_conf`` (outside Dagster: tests, benchmarks, the CLI)."""
    from pyspark.sql import SparkSession

    prepare_env()
    builder = SparkSession.builder
    for k, v in spark_conf(master, extra=extra).items():
        builder = builder.config(k, v)
    return builder.getOrCreate()
