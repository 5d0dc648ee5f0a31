"""Oxygen uptake and CO2 evolution rates (OUR, CER) from an inert-gas balance.

The one implementation used by the feature tables and the contamination detector.

Gas volumes at standard conditions (0 degC, 1 atm: 22.414 L/mol); off-gas mole fractions
on a dry basis, as the analyser reports them::

    n_air, n_o2, n_co2 = flows [slpm] * 60 / 22.414            # mol/h in
    n_out = Y_INERT_AIR * n_air / (1 - y_o2 - y_co2)            # inert (N2 + Ar) balance
    OUR = (Y_O2_AIR * n_air + n_o2 - y_o2 * n_out) * 1000 / V   # mmol O2 / L / h
    CER = (y_co2 * n_out - Y_CO2_AIR * n_air - n_co2) * 1000 / V  # mmol CO2 / L / h

Composition of dry air (mole fractions): O2 0.2095, CO2 0.0004, and everything else
(N2 0.7808, Ar 0.0093, traces), which the culture neither consumes nor produces:
``Y_INERT_AIR = 1 - 0.2095 - 0.0004 = 0.7901``. Source: the U.S. Standard Atmosphere 1976
dry-air composition (N2 78.084 %, O2 20.9476 %, Ar 0.934 %), with CO2 at today's ~0.04 %
(NOAA Global Monitoring Laboratory, ~420 ppm). The fractions must add up to 1: the former
0.7905 (= 1 - 0.2095) counted the inlet CO2 as inert as well.
"""

from __future__ import annotations

import polars as pl

#: L/mol of an ideal gas at 0 degC and 1 atm (standard litres, as mass-flow controllers report)
MOLAR_VOLUME_L = 22.414
#: O2 mole fraction of dry air
Y_O2_AIR = 0.2095
#: CO2 mole fraction of dry air (about 400 ppm)
Y_CO2_AIR = 0.0004
#: inert (N2 + Ar + traces) mole fraction of dry air: what is neither O2 nor CO2
Y_INERT_AIR = round(1.0 - Y_O2_AIR - Y_CO2_AIR, 6)
#: off-gas with less inert gas than this fraction is not a physical reading; the balance
#: divides by it, so it is bounded here rather than exploding on a faulty analyser value
MIN_INERT_FRACTION = 0.05
#: below this culture volume (L) the rates per litre are not computable (null)
MIN_VOLUME_L = 1.0


def our_cer(
    air_slpm: pl.Expr,
    o2_slpm: pl.Expr,
    co2_slpm: pl.Expr,
    offgas_o2_pct: pl.Expr,
    offgas_co2_pct: pl.Expr,
    volume_l: pl.Expr,
) -> tuple[pl.Expr, pl.Expr]:
    """(OUR, CER) in mmol/L/h as polars expressions of the sparge flows (slpm), the dry
    off-gas composition (%) and the culture volume (L); formula in the module docstring.

    A null input gives a null rate (callers decide whether a missing flow means "no
    flow"); a volume at or below ``MIN_VOLUME_L`` gives null.
    """
    y_o2 = offgas_o2_pct / 100.0
    y_co2 = offgas_co2_pct / 100.0
    n_out = Y_INERT_AIR * air_slpm / (1.0 - y_o2 - y_co2).clip(lower_bound=MIN_INERT_FRACTION)
    per_l = (60.0 / MOLAR_VOLUME_L) * 1000.0 / pl.when(volume_l > MIN_VOLUME_L).then(volume_l)
    our = (Y_O2_AIR * air_slpm + o2_slpm - y_o2 * n_out) * per_l
    cer = (y_co2 * n_out - Y_CO2_AIR * air_slpm - co2_slpm) * per_l
    return our, cer


def our_cer_columns(
    *,
    air: str = "air_flow_slpm",
    o2: str = "o2_flow_slpm",
    co2: str = "co2_flow_slpm",
    offgas_o2: str = "offgas_o2_pct",
    offgas_co2: str = "offgas_co2_pct",
    volume: str = "volume_l",
    missing_flow_is_zero: bool = False,
) -> dict[str, pl.Expr]:
    """``{"our_mmol_l_h": ..., "cer_mmol_l_h": ...}`` over the named tag columns, for
    ``with_columns(**our_cer_columns())``. ``missing_flow_is_zero`` reads a null sparge
    flow as 0 slpm (a plant without that gas line)."""

    def flow(c: str) -> pl.Expr:
        return pl.col(c).fill_null(0.0) if missing_flow_is_zero else pl.col(c)

    our, cer = our_cer(
        flow(air), flow(o2), flow(co2), pl.col(offgas_o2), pl.col(offgas_co2), pl.col(volume)
    )
    return {"our_mmol_l_h": our, "cer_mmol_l_h": cer}
