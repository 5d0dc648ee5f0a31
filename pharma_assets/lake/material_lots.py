"""Raw-material certificates of analysis: ``bronze/coa`` -> ``silver/material_lots``.

LIMS exports one CSV per CoA document (``<landing>/coa/<site_id>/<file>.csv``: the
supplier's certificate and the site's incoming-QC results of a media or feed lot, one row
per reported attribute; format in docs/data_model.md). Bronze keeps them as landed
(``bronze/coa``, the generic bronze path). Silver checks every result against the
material contract (``specs/material_spec.yaml``, a pandera schema whose checks are the
reason codes below) and splits them:

* ``silver/material_lots``: the accepted results, one row per lot x issuer x attribute
  (the newest delivery of a CoA wins), rebuilt whole from bronze;
* ``silver/material_lot_quarantine``: every rejected result with ``failed_check`` (the
  first failed check in ``REASONS`` order), ``failed_checks`` and the offending value.

Counts reconcile: bronze rows = accepted + quarantined + superseded duplicates (a later
delivery of the same coa_id/attribute), returned by :func:`build_material_lots`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import pandera.polars as pa
import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict

from .contracts import route, row_check
from .storage import UTC_US, Lake

BRONZE = ("bronze", "coa")
SILVER, QUARANTINE = "material_lots", "material_lot_quarantine"
DEFAULT_MATERIAL_SPEC = Path(__file__).parent / "specs" / "material_spec.yaml"

REASONS = (
    "type_error",
    "missing_field",
    "unknown_material",
    "invalid_lot_id",
    "unknown_issuer",
    "unknown_attribute",
    "wrong_uom",
    "value_not_finite",
    "physical_limits",
)
OFFENDING = {
    "type_error": "raw",
    "missing_field": "coa_id",
    "unknown_material": "material",
    "invalid_lot_id": "lot_id",
    "unknown_issuer": "issuer",
    "unknown_attribute": "attribute",
    "wrong_uom": "uom",
    "value_not_finite": "value",
    "physical_limits": "value",
}
SILVER_COLUMNS: dict[str, pl.DataType] = {
    "lot_id": pl.String(),
    "material": pl.String(),
    "issuer": pl.String(),
    "attribute": pl.String(),
    "value": pl.Float64(),
    "uom": pl.String(),
    "tested_ts": UTC_US,
    "coa_id": pl.String(),
    "site_id": pl.String(),
    "method": pl.String(),
    "source_file": pl.String(),
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttributeSpec(_Model):
    uom: str
    lo: float
    hi: float


class MaterialSpec(_Model):
    lot_pattern: str
    attributes: dict[str, AttributeSpec]


class CoaSpec(_Model):
    version: int
    issuers: list[str]
    materials: dict[str, MaterialSpec]


@lru_cache(maxsize=4)
def load_material_spec(path: str | Path = DEFAULT_MATERIAL_SPEC) -> CoaSpec:
    """The CoA contract file, validated (a wrong file: a clear error naming it)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
        return CoaSpec.model_validate(data)
    except Exception as e:
        raise ValueError(f"material spec {path}: {e}") from None


def _lookup(spec: CoaSpec) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {"material": m, "attribute": a, "_uom": s.uom, "_lo": s.lo, "_hi": s.hi}
            for m, ms in spec.materials.items()
            for a, s in ms.attributes.items()
        ],
        schema={
            "material": pl.String,
            "attribute": pl.String,
            "_uom": pl.String,
            "_lo": pl.Float64,
            "_hi": pl.Float64,
        },
    )


def coa_contract(spec: CoaSpec) -> pa.DataFrameSchema:
    """pandera contract of CoA results (expects the columns :func:`prepare` adds)."""
    lot_ok = pl.lit(False)
    for m, ms in spec.materials.items():
        lot_ok = lot_ok | (
            (pl.col("material") == m) & pl.col("lot_id").str.contains(f"^{ms.lot_pattern}$")
        )
    known = pl.col("_uom").is_not_null()
    return pa.DataFrameSchema(
        {
            "coa_id": pa.Column(pl.String, nullable=True),
            "lot_id": pa.Column(pl.String, nullable=True),
            "material": pa.Column(pl.String, nullable=True),
            "issuer": pa.Column(pl.String, nullable=True),
            "tested_ts": pa.Column(UTC_US, nullable=True),
            "attribute": pa.Column(pl.String, nullable=True),
            "value": pa.Column(pl.Float64, nullable=True),
            "uom": pa.Column(pl.String, nullable=True),
        },
        checks=[
            row_check(
                "type_error",
                pl.col("raw").is_null(),
                "every landed cell parses as its contract type",
            ),
            row_check(
                "missing_field",
                pl.all_horizontal(
                    pl.col(c).is_not_null() for c in ("coa_id", "lot_id", "tested_ts")
                ),
                "coa_id, lot_id and tested_ts are given",
            ),
            row_check(
                "unknown_material",
                pl.col("material").is_in(list(spec.materials)).fill_null(False),
                f"material is one of {sorted(spec.materials)}",
            ),
            row_check(
                "invalid_lot_id",
                lot_ok.fill_null(False)
                | ~pl.col("material").is_in(list(spec.materials)).fill_null(False),
                "lot id matches its material's pattern",
            ),
            row_check(
                "unknown_issuer",
                pl.col("issuer").is_in(spec.issuers).fill_null(False),
                f"issuer is one of {spec.issuers}",
            ),
            row_check(
                "unknown_attribute",
                known | ~pl.col("material").is_in(list(spec.materials)).fill_null(False),
                "attribute is in the material's spec",
            ),
            row_check(
                "wrong_uom",
                (pl.col("uom") == pl.col("_uom")).fill_null(False) | ~known,
                "unit is the attribute's unit",
            ),
            row_check(
                "value_not_finite",
                pl.col("value").is_finite().fill_null(False),
                "value is a finite number",
            ),
            row_check(
                "physical_limits",
                pl.col("value").is_between(pl.col("_lo"), pl.col("_hi")).fill_null(True)
                | ~pl.col("value").is_finite().fill_null(False),
                "value within the attribute's physical limits",
            ),
        ],
        name=f"silver_material_lots_v{spec.version}",
        strict=False,
    )


def prepare(bronze_rows: pl.DataFrame, spec: CoaSpec) -> pl.DataFrame:
    """Bronze CoA rows with the attribute's expected unit and limits joined on."""
    return bronze_rows.join(_lookup(spec), on=["material", "attribute"], how="left")


def validate(bronze_rows: pl.DataFrame, spec: CoaSpec) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(accepted rows, quarantined rows with failed_check/failed_checks/offending_value)."""
    good, bad = route(prepare(bronze_rows, spec), coa_contract(spec), REASONS, OFFENDING)
    return good.drop("_uom", "_lo", "_hi"), bad.drop("_uom", "_lo", "_hi")


def build_material_lots(lake: Lake, spec_path: str | Path | None = None) -> dict[str, Any]:
    """Rebuild ``silver/material_lots`` and its quarantine from ``bronze/coa``."""
    spec = load_material_spec(spec_path or DEFAULT_MATERIAL_SPEC)
    rows = lake.read(*BRONZE)
    if rows is None or rows.height == 0:
        return {"rows_in": 0, "results": 0, "quarantined": 0, "superseded": 0, "lots": 0}
    # the newest delivery of a result wins (a re-issued CoA replaces the earlier one)
    rows = rows.sort("ingested_at", "source_file")
    key = ["coa_id", "attribute"]
    newest = rows.unique(key, keep="last", maintain_order=True)
    superseded = rows.height - newest.height
    good, bad = validate(newest, spec)
    files = sorted(set(rows["source_file"].to_list()))
    accepted = good.select([pl.col(c).cast(t) for c, t in SILVER_COLUMNS.items()]).sort(
        "lot_id", "issuer", "attribute"
    )
    quarantined = bad.select(
        *[pl.col(c).cast(t) for c, t in SILVER_COLUMNS.items()],
        pl.col("raw"),
        pl.col("failed_check"),
        pl.col("failed_checks"),
        pl.col("offending_value"),
    )
    lake.overwrite("silver", SILVER, accepted, source_files=files)
    lake.overwrite("silver", QUARANTINE, quarantined)
    reasons = bad.group_by("failed_check").len().sort("failed_check")
    return {
        "rows_in": rows.height,
        "results": accepted.height,
        "quarantined": quarantined.height,
        "superseded": superseded,
        "lots": accepted["lot_id"].n_unique(),
        **{f"quarantined_{r}": n for r, n in reasons.iter_rows()},
    }
