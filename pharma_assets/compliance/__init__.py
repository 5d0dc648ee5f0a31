"""GxP records for pharma-twin (21 CFR Part 11 / EU GMP Annex 11): audit trail, users and
roles, electronic signatures, deviations and CAPA, batch release, change control, retention
and the electronic batch record. Plain Python: no Dagster or Streamlit imports here.

The tables live under ``<lake>/gxp/``; docs/compliance.md maps each requirement to the code
and to the test that shows it.
"""

from pharma_assets.lake.storage import GXP_LAYER

__all__ = ["GXP_LAYER"]
