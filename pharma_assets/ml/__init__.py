"""Machine learning on the lake: feature tables, models, the MLflow registry (no Dagster)."""
