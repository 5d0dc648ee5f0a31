"""Dagster definitions, one folder per layer (loaded by pharma_assets.definitions)."""
