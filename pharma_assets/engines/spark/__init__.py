"""The Spark engine (``PHARMA_ENGINE=spark``): plain Python functions taking a SparkSession.

- ``session``: the session settings per environment (local[N], standalone, Kubernetes);
- ``lake_io``: Delta snapshots read through delta-rs's file list, results committed
  through the lake's writer (or Spark's Delta writer where its jars exist);
- ``backfill``: landing -> bronze -> silver for many batches, one Spark task per group;
- ``transforms``: the minute timeline and the ML timeline products.

Nothing here imports Dagster: the Dagster side is ``LakehouseResource.spark_session``
(dagster-pyspark's ``LazyPySparkResource``) and the ``spark_backfill_job``.
"""
