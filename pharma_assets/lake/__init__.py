"""The medallion lakehouse as plain Python: storage, landing discovery, bronze, silver, gold.

No Dagster or Streamlit imports here; the assets in ``pharma_assets.defs`` are thin wrappers.
"""
