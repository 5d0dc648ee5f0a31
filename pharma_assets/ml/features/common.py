"""Small helpers shared by the feature modules."""

from __future__ import annotations

import math

import polars as pl


def hours(expr: pl.Expr) -> pl.Expr:
    """A duration expression in hours (float)."""
    return expr.dt.total_microseconds() / 3.6e9


def nan_to_null(df: pl.DataFrame) -> pl.DataFrame:
    """NaN -> null in float columns (so every model sees one kind of missing value)."""
    return df.with_columns(pl.col(pl.Float64).fill_nan(None))


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
