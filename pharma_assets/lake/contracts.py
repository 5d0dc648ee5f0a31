"""pandera contracts built from the CPP specification file.

``telemetry_contract(spec)`` is a pandera (polars) DataFrameSchema over telemetry rows
prepared by silver (canonical value and unit, phase, the row's batch window). Each check is
named by the stable reason code that lands in ``silver/telemetry_quarantine.failed_check``.
``route(df, schema)`` validates lazily and splits the frame into valid rows and quarantined
rows, each quarantined row with every check it failed, the first (in REASON_ORDER) as its
reason, and the offending value.

The contract stays the single source of truth, but on the hot path it is not evaluated by
pandera's validator (one pass over the frame per check, then a join of the failure cases):
``compile_contract`` turns the schema's column types, nullability, row checks (each
``row_check`` carries its polars expression) and ``isin`` checks into one list of polars
expressions, evaluated in one parallel pass (``route``, ``validate``). A schema using
anything else pandera can express falls back to pandera (``route_pandera``), and the
compiled path is tested to give the same rows, reasons and offending values
(``test_contracts.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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


# attribute of a pandera Check made by ``row_check``: its polars expression (True = passes)
ROW_EXPR = "_pharma_row_expr"


def row_check(name: str, expr: pl.Expr, description: str) -> pa.Check:
    check = pa.Check(lambda data: data.lazyframe.select(expr), name=name, error=description)
    setattr(check, ROW_EXPR, expr)  # for compile_contract: the same expression, one pass
    return check


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
                ~pl.col("_key").map_batches(key_is_duplicated, return_dtype=pl.Boolean),
                "one reading per (unit, tag, ts) in the batch",
            ),
        ],
        name=f"silver_telemetry_accepted_v{spec.version}",
        strict=False,
    )


def _time_ordered_keys(s: pl.Series) -> np.ndarray | None:
    """The keys as numpy when they are silver's ``_key`` (ts in microseconds * 1024 + tag
    index) in time order, the landed order; None otherwise (nulls, or time going back)."""
    if s.null_count() or s.dtype != pl.Int64 or s.len() < 2:
        return None
    a = s.to_numpy()
    t = a >> 10
    return a if bool((t[1:] >= t[:-1]).all()) else None


def _sorted_dups(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, equal-to-previous in that order): a stable sort of keys that are sorted but
    for the order of the tags within one timestamp, which timsort does in about linear time."""
    order = np.argsort(a, kind="stable")
    ranked = a[order]
    return order, ranked[1:] == ranked[:-1]


def key_is_duplicated(s: pl.Series) -> pl.Series:
    """``s.is_duplicated()``; for silver's keys in time order by a stable sort instead of a
    hash table (2 ms instead of 40 ms for 500 k keys). Any other series: polars'."""
    a = _time_ordered_keys(s)
    if a is None:
        return s.is_duplicated()
    order, same = _sorted_dups(a)
    dup = np.zeros(len(a), dtype=bool)
    dup[1:] |= same
    dup[:-1] |= same
    out = np.empty(len(a), dtype=bool)
    out[order] = dup
    return pl.Series(s.name, out)


def key_is_first_distinct(s: pl.Series) -> pl.Series:
    """``s.is_first_distinct()`` (the first row of each key, in row order), likewise."""
    a = _time_ordered_keys(s)
    if a is None:
        return s.is_first_distinct()
    order, same = _sorted_dups(a)
    first = np.ones(len(a), dtype=bool)
    first[1:] = ~same
    out = np.empty(len(a), dtype=bool)
    out[order] = first
    return pl.Series(s.name, out)


def route(
    df: pl.DataFrame,
    schema: pa.DataFrameSchema,
    reasons: tuple[str, ...] = REASON_ORDER,
    offending_cols: dict[str, str] = OFFENDING,
    keep: Sequence[str] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(valid rows, quarantined rows with failed_check, failed_checks, offending_value).

    ``reasons``: the checks in priority order (a row failing several is quarantined under
    the first); ``offending_cols``: the column holding each reason's offending value;
    ``keep``: the columns of the valid rows to return (all by default; fewer columns are
    fewer bytes copied by the filter). The schema's checks run compiled, in one pass (``compile_contract``); a schema that
    cannot be compiled is validated by pandera (``route_pandera``, the same result)."""
    compiled = compile_contract(schema)
    if compiled is None:
        good, bad = route_pandera(df, schema, reasons, offending_cols)
        return (good if keep is None else good.select(keep)), bad
    compiled.check_structure(df)
    rank = {r: i for i, r in enumerate(reasons)}
    # the failed checks in priority order (unknown names last, in the schema's order)
    names = sorted(compiled.names(), key=lambda n: rank.get(n, len(rank)))
    flags = compiled.failures(df)
    failed = pl.any_horizontal(names) if names else pl.lit(False)
    mask = flags.select(failed.alias("_failed")).to_series()
    valid = df if keep is None else df.select(keep)
    if not mask.any():
        return valid, _no_quarantine(df)
    labels = [pl.when(pl.col(n)).then(pl.lit(n)) for n in names]
    reasons_of_bad = flags.filter(mask).select(
        failed_check=pl.coalesce(labels),
        failed_checks=pl.concat_str(labels, separator=",", ignore_nulls=True),
    )
    bad = pl.concat([df.filter(mask), reasons_of_bad], how="horizontal")
    bad = bad.with_columns(offending_value=_offending(bad, offending_cols))
    return valid.filter(~mask), bad


def validate(df: pl.DataFrame, schema: pa.DataFrameSchema, lazy: bool = False) -> None:
    """``schema.validate(df, lazy=lazy)``, compiled: one pass over the frame.

    When a compiled check fails (or the schema cannot be compiled, or the columns or types
    differ), pandera validates the frame itself, so a failure raises pandera's own error
    (``SchemaError``/``SchemaErrors`` with the failure cases)."""
    compiled = compile_contract(schema)
    if compiled is None or not compiled.structure_ok(df):
        schema.validate(df, lazy=lazy)
        return
    names = compiled.names()
    if not names or not compiled.failures(df).select(pl.any_horizontal(names).any()).item():
        return
    schema.validate(df, lazy=lazy)
    raise AssertionError(f"{schema.name}: a compiled check failed where pandera passed")


def _no_quarantine(df: pl.DataFrame) -> pl.DataFrame:
    return df.clear().with_columns(
        failed_check=pl.lit(None, pl.String),
        failed_checks=pl.lit(None, pl.String),
        offending_value=pl.lit(None, pl.String),
    )


def _offending(bad: pl.DataFrame, offending_cols: dict[str, str]) -> pl.Expr:
    offending = pl.lit(None, pl.String)
    for reason, col in offending_cols.items():
        if col in bad.columns:
            offending = (
                pl.when(pl.col("failed_check") == reason)
                .then(pl.col(col).cast(pl.String))
                .otherwise(offending)
            )
    return offending


@dataclass(frozen=True)
class CompiledContract:
    """A pandera schema as polars expressions: ``failures`` gives one boolean column per
    check name (True = the row fails it), named as pandera names the check in its failure
    cases (the row check's name; ``not_nullable``; ``isin(...)``)."""

    name: str
    dtypes: dict[str, pl.DataType]
    checks: tuple[tuple[str, pl.Expr], ...]  # (name, expression: True where a row FAILS)

    def names(self) -> list[str]:
        return list(dict.fromkeys(n for n, _ in self.checks))

    def structure_ok(self, df: pl.DataFrame) -> bool:
        return all(c in df.schema and df.schema[c] == t for c, t in self.dtypes.items())

    def check_structure(self, df: pl.DataFrame) -> None:
        if not self.structure_ok(df):
            wrong = {
                c: (str(t), str(df.schema.get(c, "missing")))
                for c, t in self.dtypes.items()
                if c not in df.schema or df.schema[c] != t
            }
            raise ValueError(
                f"{self.name}: the frame does not have the contract's columns/types "
                f"(column: (expected, found)): {wrong}"
            )

    def failures(self, df: pl.DataFrame) -> pl.DataFrame:
        """One pass over ``df``: a boolean column per check name, True where the row fails."""
        by_name: dict[str, list[pl.Expr]] = {}
        for n, e in self.checks:
            by_name.setdefault(n, []).append(e)
        exprs = [pl.any_horizontal(es).alias(n) for n, es in by_name.items()]
        return df.lazy().select(exprs).collect()


def compile_contract(schema: pa.DataFrameSchema) -> CompiledContract | None:
    """The schema's checks as polars expressions, or None when it uses anything else
    (coercion, uniqueness options, parsers, custom column checks, grouped or element-wise
    checks, failure-case limits): pandera then validates it."""
    if (
        schema.coerce
        or schema.unique
        or schema.ordered
        or schema.add_missing_columns
        or schema.parsers
        or schema.dtype is not None
        or schema.drop_invalid_rows
    ):
        return None
    dtypes: dict[str, pl.DataType] = {}
    checks: list[tuple[str, pl.Expr]] = []
    for name, col in schema.columns.items():
        if col.coerce or col.unique or col.regex or not col.required or col.parsers:
            return None
        if col.dtype is None:
            return None
        dtype = col.dtype.type
        dtypes[name] = dtype() if isinstance(dtype, type) else dtype
        if not col.nullable:
            ok = pl.col(name).is_not_null()
            if dtypes[name].is_float():
                ok = ok & pl.col(name).is_not_nan()
            checks.append(("not_nullable", ~ok))
        for check in col.checks:
            if check.name != "isin" or not _plain(check):
                return None
            allowed = list(check.statistics["allowed_values"])
            checks.append((str(check), _fails(pl.col(name).is_in(allowed), check.ignore_na)))
    for check in schema.checks:
        expr = getattr(check, ROW_EXPR, None)
        if expr is None or not _plain(check) or check.name is None:
            return None
        checks.append((check.name, _fails(expr, check.ignore_na)))
    return CompiledContract(str(schema.name), dtypes, tuple(checks))


def _plain(check: pa.Check) -> bool:
    return (
        check.groupby is None
        and check.groups is None
        and not check.element_wise
        and check.n_failure_cases is None
        and not check.raise_warning
    )


def _fails(passes: pl.Expr, ignore_na: bool) -> pl.Expr:
    """Where a row fails a check whose output is ``passes`` (pandera's polars backend: a
    null output passes when the check ignores nulls, fails otherwise)."""
    return ~passes.fill_null(ignore_na)


def route_pandera(
    df: pl.DataFrame,
    schema: pa.DataFrameSchema,
    reasons: tuple[str, ...] = REASON_ORDER,
    offending_cols: dict[str, str] = OFFENDING,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``route`` by pandera's own validator (lazy, one pass per check): the reference the
    compiled path is tested against, and the path of schemas ``compile_contract`` refuses."""
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
    bad = df.join(failed, on="_row", how="inner", maintain_order="left")
    bad = bad.with_columns(offending_value=_offending(bad, offending_cols)).drop("_row")
    good = df.filter(~pl.col("_row").is_in(failed["_row"].implode())).drop("_row")
    return good, bad
