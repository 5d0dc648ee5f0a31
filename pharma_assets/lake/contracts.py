"""pandera contracts built from the CPP specification file.

``telemetry_contract(spec)`` is a pandera (polars) DataFrameSchema over telemetry rows
prepared by silver (canonical value and unit, phase, the row's batch window). Each check is
named by the stable reason code that lands in ``silver/telemetry_quarantine.failed_check``.
``route(df, schema)`` validates lazily and splits the frame into valid rows and quarantined
rows, each quarantined row with every check it failed, the first (in REASON_ORDER) as its
reason, and the offending value.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaErrors

from .specs import CppSpec
from .storage import UTC_US

# Reasons in priority order: a row failing several checks is quarantined under the first.
REASON_ORDER = (
    "type_error",
    "batch_id_mismatch",
    "unit_id_mismatch",
    "unknown_tag",
    "unknown_uom",
    "value_not_finite",
    "quality_bad",
    "physical_limits",
    "outside_batch_window",
    "ts_in_future",
    "duplicate_reading",
)
# Column holding the offending value of each reason.
OFFENDING = {
    "type_error": "raw",
    "batch_id_mismatch": "raw",
    "unit_id_mismatch": "raw",
    "unknown_tag": "tag",
    "unknown_uom": "uom_raw",
    "value_not_finite": "value_raw",
    "quality_bad": "quality",
    "physical_limits": "value",
    "outside_batch_window": "ts",
    "ts_in_future": "ts",
    "duplicate_reading": "ts",
}


def row_check(name: str, expr: pl.Expr, description: str) -> pa.Check:
    return pa.Check(lambda data: data.lazyframe.select(expr), name=name, error=description)


def telemetry_contract(spec: CppSpec) -> pa.DataFrameSchema:
    """The silver telemetry contract for one spec version.

    Expects the columns silver prepares: ts, unit_id, batch_id, tag, value (canonical unit),
    uom (canonical), value_raw/uom_raw (as landed), quality, raw (type errors from bronze),
    phys_lo/phys_hi (the tag's physical limits), win_lo/win_hi (the batch window),
    future_limit (ingestion time + tolerance), is_dup (an earlier reading with the same key).
    """
    tags = sorted(spec.tags)
    return pa.DataFrameSchema(
        {
            "ts": pa.Column(UTC_US, nullable=True),
            "unit_id": pa.Column(pl.String, nullable=True),
            "batch_id": pa.Column(pl.String, nullable=False),
            "tag": pa.Column(pl.String, nullable=True),
            "value": pa.Column(pl.Float64, nullable=True),
            "uom": pa.Column(pl.String, nullable=True),
            "quality": pa.Column(pl.String, nullable=True),
        },
        checks=[
            row_check(
                "type_error",
                # bronze also records batch/unit id mismatches in `raw`: not type errors
                pl.col("raw").is_null()
                | (pl.col("raw").str.replace_all(r"(?:^|;)(?:batch_id|unit_id)=[^;]*", "") == ""),
                "every landed cell parses as its contract type",
            ),
            row_check(
                "batch_id_mismatch",
                pl.col("raw").is_null() | ~pl.col("raw").str.contains("batch_id="),
                "the batch id in the file matches its landing folder",
            ),
            row_check(
                "unit_id_mismatch",
                pl.col("raw").is_null() | ~pl.col("raw").str.contains("unit_id="),
                "the unit id in the file matches its landing folder",
            ),
            row_check(
                "unknown_tag",
                pl.col("tag").is_in(tags).fill_null(False),
                f"tag is one of the {len(tags)} tags of CPP spec v{spec.version}, its unit "
                "class or a site tag map (landing/site_tags/)",
            ),
            row_check(
                "unknown_uom",
                pl.col("uom").is_not_null() | ~pl.col("tag").is_in(tags).fill_null(False),
                "the engineering unit is the tag's unit or has a conversion in the spec",
            ),
            row_check(
                "value_not_finite",
                pl.col("value").is_finite().fill_null(False),
                "value is a finite number",
            ),
            row_check(
                "quality_bad",
                (pl.col("quality") != "bad").fill_null(True),
                "the historian did not flag the reading bad",
            ),
            row_check(
                "physical_limits",
                pl.col("value").is_between(pl.col("phys_lo"), pl.col("phys_hi")).fill_null(True)
                | ~pl.col("value").is_finite().fill_null(False),
                "value within the tag's physical limits",
            ),
            row_check(
                "outside_batch_window",
                pl.col("ts").is_between(pl.col("win_lo"), pl.col("win_hi")).fill_null(False),
                "timestamp within the batch window (start - grace, end + grace)",
            ),
            row_check(
                "ts_in_future",
                (pl.col("ts") <= pl.col("future_limit")).fill_null(True),
                "timestamp not later than ingestion time + tolerance",
            ),
            row_check("duplicate_reading", ~pl.col("is_dup"), "one reading per (unit, tag, ts)"),
        ],
        name=f"silver_telemetry_v{spec.version}",
        strict=False,
    )


def accepted_contract(spec: CppSpec) -> pa.DataFrameSchema:
    """What the valid silver telemetry rows of one batch satisfy (types, allowed tags,
    canonical units, uniqueness).

    Expects silver's ``_key`` column (``ts`` in microseconds * 1024 + the tag's index).
    """
    units = {t: s.uom for t, s in spec.tags.items()}
    return pa.DataFrameSchema(
        {
            "ts": pa.Column(UTC_US, nullable=False),
            "unit_id": pa.Column(pl.String, nullable=False),
            "batch_id": pa.Column(pl.String, nullable=False),
            "tag": pa.Column(pl.String, pa.Check.isin(sorted(spec.tags)), nullable=False),
            "value": pa.Column(pl.Float64, nullable=False),
            "uom": pa.Column(pl.String, nullable=False),
            "_key": pa.Column(pl.Int64, nullable=False),
        },
        checks=[
            row_check(
                "canonical_uom",
                pl.col("uom") == pl.col("tag").replace_strict(units, default=None),
                "uom is the tag's canonical unit",
            ),
            # uniqueness of (unit, tag, ts) on silver's integer key (ts in microseconds * 1024
            # + the tag's index in the spec), checked per batch (a batch runs on one unit):
            # pandera's `unique=` on the three string/time columns, or the key per unit_id,
            # cost 5-10x more per row (docs/benchmarks.md)
            row_check(
                "unique_reading",
                ~pl.col("_key").is_duplicated(),
                "one reading per (unit, tag, ts) in the batch",
            ),
        ],
        name=f"silver_telemetry_accepted_v{spec.version}",
        strict=False,
    )


def route(
    df: pl.DataFrame,
    schema: pa.DataFrameSchema,
    reasons: tuple[str, ...] = REASON_ORDER,
    offending_cols: dict[str, str] = OFFENDING,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(valid rows, quarantined rows with failed_check, failed_checks, offending_value).

    ``reasons``: the checks in priority order (a row failing several is quarantined under
    the first); ``offending_cols``: the column holding each reason's offending value."""
    df = df.with_row_index("_row")
    try:
        schema.validate(df, lazy=True)
        return df.drop("_row"), df.clear().drop("_row").with_columns(
            failed_check=pl.lit(None, pl.String),
            failed_checks=pl.lit(None, pl.String),
            offending_value=pl.lit(None, pl.String),
        )
    except SchemaErrors as e:
        fc = e.failure_cases
    structural = fc.filter(pl.col("index").is_null())
    if structural.height:
        raise ValueError(
            f"{schema.name}: the frame does not have the contract's columns/types:\n{structural}"
        )
    rank = {r: i for i, r in enumerate(reasons)}
    # pandera reports a check by its error text when it has one: map back to the check name
    names = {c.error: c.name for c in schema.checks if c.error}
    failed = (
        fc.select(pl.col("index").cast(pl.UInt32).alias("_row"), pl.col("check").replace(names))
        .unique()
        .with_columns(
            rank=pl.col("check").replace_strict(rank, default=len(rank), return_dtype=pl.Int32)
        )
        .sort("_row", "rank")
        .group_by("_row", maintain_order=True)
        .agg(failed_check=pl.col("check").first(), failed_checks=pl.col("check").str.join(","))
    )
    bad = df.join(failed, on="_row", how="inner")
    offending = pl.lit(None, pl.String)
    for reason, col in offending_cols.items():
        if col in bad.columns:
            offending = (
                pl.when(pl.col("failed_check") == reason)
                .then(pl.col(col).cast(pl.String))
                .otherwise(offending)
            )
    bad = bad.with_columns(offending_value=offending).drop("_row")
    good = df.filter(~pl.col("_row").is_in(failed["_row"].implode())).drop("_row")
    return good, bad
