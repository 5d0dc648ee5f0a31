"""Column schemas shown in the Dagster UI, made by dagster-pandera from the same pandera
contracts silver validates with (``lake/contracts.py``), so the UI cannot drift from them.

Only the schema is used: the contracts already run inside silver (routing rows to
quarantine, then checking the accepted rows), and the assets write their Delta tables
themselves, so a Dagster type check on an output would validate every row a second time.
"""

from __future__ import annotations

import warnings
from typing import Any

import dagster as dg

from pharma_assets.lake.contracts import accepted_contract, telemetry_contract
from pharma_assets.lake.specs import CppSpec

INTERNAL = {"_key"}  # silver's integer key: checked by the contract, not a table column


def _table_schema(contract: Any, keep: set[str] | None = None) -> dg.TableSchema:
    from dagster_pandera import pandera_schema_to_dagster_type  # pandas: only when reported

    with warnings.catch_warnings():  # the function is marked beta in dagster-pandera 0.29
        warnings.simplefilter("ignore", dg.BetaWarning)
        value = pandera_schema_to_dagster_type(contract).metadata["schema"]
    schema = value.value
    assert isinstance(schema, dg.TableSchema)
    cols = [
        c for c in schema.columns if c.name not in INTERNAL and (keep is None or c.name in keep)
    ]
    return dg.TableSchema(columns=cols, constraints=schema.constraints)


def column_schema_metadata(table: str, spec: CppSpec) -> dict[str, Any]:
    """``dagster/column_schema`` for the silver telemetry tables (empty for the others).

    ``telemetry``: the accepted-rows contract (types, allowed tags, canonical units, one
    reading per key). ``telemetry_quarantine``: the routing contract's checks, named by the
    reason codes its rows carry in ``failed_check``.
    """
    if table == "telemetry":
        return {"dagster/column_schema": _table_schema(accepted_contract(spec))}
    if table == "telemetry_quarantine":
        keep = {"ts", "unit_id", "batch_id", "tag", "value", "uom", "quality"}
        return {"dagster/column_schema": _table_schema(telemetry_contract(spec), keep)}
    return {}
