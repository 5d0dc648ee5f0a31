"""Plant configuration and recipes as data (YAML), validated on load.

The plant follows the ISA-88 physical model (site / area / unit) and every unit carries the
same equipment list and tag dictionary. Recipes are ISA-88 style control recipes: phases,
set-points, initial charge, feed schedule and glucose control. Nothing here knows about
Dagster or storage; the simulator and the pipeline both read these objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pharma_assets.errors import ConfigError
from pharma_assets.process.vocabulary import BIOREACTOR

# Signals the simulator can produce (the built-in bioreactor unit class's tag dictionary,
# pharma_assets/process/unit_classes/bioreactor.yaml) and its phases, re-exported here with
# ConfigError (pharma_assets.errors) so that older imports keep working.
CANONICAL_TAGS: dict[str, str] = BIOREACTOR.uoms
PHASES = BIOREACTOR.phases
FAULT_TYPES = (
    "contamination",
    "ph_probe_drift",
    "do_probe_failure",
    "feed_pump_failure",
    "chiller_fault",
    "agitator_failure",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- plant


#: Protocols a unit can be served over live (``pharma-twin live --serve``, docs/gateway.md).
PROTOCOLS = ("opcua", "mqtt", "modbus")


def _protocol(v: str | None) -> str | None:
    if v is not None and v not in PROTOCOLS:
        raise ValueError(f"unknown protocol {v!r}; use {', '.join(PROTOCOLS)}")
    return v


class UnitConfig(_Model):
    unit_id: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    working_volume_l: float = Field(gt=0)
    #: the protocol the unit is served over live (None: its area's, else every --serve one)
    protocol: str | None = None

    _check_protocol = field_validator("protocol")(_protocol)


class AreaConfig(_Model):
    area_id: str
    name: str
    units: list[UnitConfig] = Field(min_length=1)
    protocol: str | None = None  # the default protocol of the area's units

    _check_protocol = field_validator("protocol")(_protocol)


class SiteConfig(_Model):
    site_id: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    name: str


class EquipmentConfig(_Model):
    suffix: str
    type: Literal[
        "vessel",
        "agitator_motor",
        "feed_pump",
        "base_pump",
        "mass_flow_controller",
        "temperature_probe",
        "ph_probe",
        "do_probe",
        "chiller",
    ]
    description: str
    critical: bool = False


class TagConfig(_Model):
    tag: str
    uom: str
    sampling_period_s: int = Field(gt=0)
    equipment: str
    description: str

    @field_validator("tag")
    @classmethod
    def _known_tag(cls, v: str) -> str:
        if v not in CANONICAL_TAGS:
            raise ValueError(
                f"unknown tag {v!r}; the simulator produces only {sorted(CANONICAL_TAGS)}"
            )
        return v

    @model_validator(mode="after")
    def _uom_matches(self) -> TagConfig:
        expected = CANONICAL_TAGS[self.tag]
        if self.uom != expected:
            raise ValueError(f"tag {self.tag!r} has uom {self.uom!r}; expected {expected!r}")
        return self


class ReliabilityConfig(_Model):
    bearing_life_weibull_scale_h: float = Field(gt=0)
    bearing_life_weibull_shape: float = Field(gt=0)
    pump_life_weibull_scale_h: float = Field(gt=0)
    pump_life_weibull_shape: float = Field(gt=0)
    preventive_maintenance_interval_h: float = Field(gt=0)
    do_membrane_replacement_batches: int = Field(ge=1)
    turnaround_h: float = Field(ge=0)
    repair_downtime_h: float = Field(ge=0)


class PFInterval(_Model):
    """P-F interval of a failure mode: lognormal, ``median_h`` hours from the potential
    failure P (the degradation first shows in the signals) to the functional failure F,
    ``sigma`` the standard deviation of its logarithm. Sources in docs/process_model.md."""

    median_h: float = Field(gt=0)
    sigma: float = Field(ge=0, le=2)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile in hours (q in (0, 1))."""
        from statistics import NormalDist

        return float(self.median_h * math.exp(self.sigma * NormalDist().inv_cdf(q)))


class MotorReliability(_Model):
    """Failure modes of the agitator and feed-pump motors as condition monitoring sees
    them (docs/process_model.md, "Motor failure modes"): bearing defects and stator winding
    insulation degradation, each with a P-F interval, and sudden trips without precursor."""

    bearing_pf: PFInterval = PFInterval(median_h=300.0, sigma=0.45)
    winding_life_weibull_scale_h: float = Field(default=14000.0, gt=0)
    winding_life_weibull_shape: float = Field(default=1.5, gt=0)
    winding_pf: PFInterval = PFInterval(median_h=240.0, sigma=0.5)
    #: share of winding failures that are a turn-to-turn short progressing within hours
    winding_fast_share: float = Field(default=0.25, ge=0, le=1)
    winding_fast_pf: PFInterval = PFInterval(median_h=8.0, sigma=0.5)
    feed_pump_bearing_life_weibull_scale_h: float = Field(default=4600.0, gt=0)
    feed_pump_bearing_life_weibull_shape: float = Field(default=2.5, gt=0)
    #: degradation at functional failure / at the P point (lognormal median and sigma)
    failure_to_detection_ratio: float = Field(default=20.0, gt=1)
    failure_to_detection_ratio_sigma: float = Field(default=0.25, ge=0)
    #: per batch: agitator drive trips without precursor (supply interruption, interlock)
    agitator_sudden_trip: float = Field(default=0.015, ge=0, le=1)


class FaultRates(_Model):
    contamination: float = Field(ge=0, le=1)
    ph_probe_drift: float = Field(ge=0, le=1)
    do_probe_failure: float = Field(ge=0, le=1)
    feed_pump_failure: float = Field(ge=0, le=1)
    chiller_fault: float = Field(ge=0, le=1)


class PlantConfig(_Model):
    site: SiteConfig
    areas: list[AreaConfig] = Field(min_length=1)
    equipment: list[EquipmentConfig]
    tags: list[TagConfig] = Field(min_length=1)
    reliability: ReliabilityConfig
    faults: FaultRates
    motors: MotorReliability = MotorReliability()

    @model_validator(mode="after")
    def _consistent(self) -> PlantConfig:
        ids = [u.unit_id for u in self.units]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate unit ids {dupes}")
        suffixes = {e.suffix for e in self.equipment}
        for t in self.tags:
            if t.equipment not in suffixes:
                raise ValueError(
                    f"tag {t.tag!r} names equipment {t.equipment!r}, not in {sorted(suffixes)}"
                )
        names = [t.tag for t in self.tags]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tags in the tag dictionary")
        return self

    @property
    def units(self) -> list[UnitConfig]:
        return [u for a in self.areas for u in a.units]

    def area_of(self, unit_id: str) -> str:
        for a in self.areas:
            if any(u.unit_id == unit_id for u in a.units):
                return a.area_id
        raise KeyError(f"unit {unit_id!r} is not in plant {self.site.site_id}")

    def protocol_of(self, unit_id: str) -> str | None:
        """The protocol ``unit_id`` is served over live: its own, else its area's, else
        None (then every protocol ``--serve`` names)."""
        for a in self.areas:
            for u in a.units:
                if u.unit_id == unit_id:
                    return u.protocol or a.protocol
        raise KeyError(f"unit {unit_id!r} is not in plant {self.site.site_id}")

    def equipment_ids(self, unit_id: str) -> Iterator[tuple[str, EquipmentConfig]]:
        for e in self.equipment:
            yield f"{unit_id}-{e.suffix}", e

    def with_units(self, n_units: int) -> PlantConfig:
        """A copy with ``n_units`` units, reusing configured ones and adding more alike."""
        if n_units < 1:
            raise ConfigError(f"--units must be at least 1, got {n_units}")
        # units keep their protocol when their area folds into the first one
        existing = [
            u.model_copy(update={"protocol": u.protocol or a.protocol})
            for a in self.areas
            for u in a.units
        ]
        template = existing[0]
        units = [
            existing[i]
            if i < len(existing)
            else UnitConfig(
                unit_id=f"BR{i + 1:02d}",
                working_volume_l=template.working_volume_l,
                protocol=self.areas[0].protocol,
            )
            for i in range(n_units)
        ]
        area = self.areas[0].model_copy(update={"units": units, "protocol": None})
        return self.model_copy(update={"areas": [area]})


# ---------------------------------------------------------------- recipes


class PhaseConfig(_Model):
    phase: Literal["inoculation", "growth", "production", "harvest"]
    start_day: float = Field(ge=0)


class SetpointConfig(_Model):
    temperature_c: float = Field(ge=30, le=39)
    production_temperature_c: float = Field(ge=28, le=39)
    temperature_shift_day: float = Field(ge=0)
    temperature_ramp_h: float = Field(gt=0)
    ph: float = Field(ge=6.5, le=7.5)
    ph_deadband: float = Field(gt=0, le=0.3)
    dissolved_oxygen_pct: float = Field(gt=5, le=100)
    agitation_rpm_min: float = Field(gt=0)
    agitation_rpm_max: float = Field(gt=0)
    air_flow_slpm: float = Field(gt=0)
    o2_flow_max_slpm: float = Field(ge=0)
    co2_flow_max_slpm: float = Field(ge=0)
    headspace_pressure_bar: float = Field(ge=0, le=1.5)

    @model_validator(mode="after")
    def _rpm_order(self) -> SetpointConfig:
        if self.agitation_rpm_max <= self.agitation_rpm_min:
            raise ValueError("agitation_rpm_max must exceed agitation_rpm_min")
        return self


class InitialCharge(_Model):
    fill_volume_l: float = Field(gt=0)
    seed_density_e6_cells_ml: float = Field(gt=0, le=5)
    glucose_g_l: float = Field(ge=0)
    glutamine_mmol_l: float = Field(ge=0)
    bicarbonate_mmol_l: float = Field(gt=0)


class FeedConfig(_Model):
    start_day: float = Field(ge=0)
    end_day: float = Field(ge=0)
    rate_pct_fill_per_day: float = Field(ge=0, le=20)
    glucose_g_l: float = Field(ge=0)
    glutamine_mmol_l: float = Field(ge=0)


class GlucoseControl(_Model):
    threshold_g_l: float = Field(ge=0)
    bolus_to_g_l: float = Field(ge=0)
    stock_g_l: float = Field(gt=0)


class Recipe(_Model):
    recipe_id: str
    version: int = Field(ge=1)
    product: str
    description: str
    share: float = Field(gt=0)
    planned_duration_days: float = Field(ge=1, le=30)
    phases: list[PhaseConfig]
    setpoints: SetpointConfig
    initial: InitialCharge
    feed: FeedConfig
    glucose_control: GlucoseControl

    @model_validator(mode="after")
    def _phases_ordered(self) -> Recipe:
        names = [p.phase for p in self.phases]
        if tuple(names) != PHASES:
            raise ValueError(f"phases must be {list(PHASES)} in that order, got {names}")
        starts = [p.start_day for p in self.phases]
        if starts != sorted(starts) or starts[-1] >= self.planned_duration_days:
            raise ValueError(f"phase start days {starts} must increase and end before harvest")
        if self.feed.end_day <= self.feed.start_day:
            raise ValueError("feed.end_day must be after feed.start_day")
        return self

    def phase_at(self, day: float) -> str:
        current = self.phases[0].phase
        for p in self.phases:
            if day >= p.start_day:
                current = p.phase
        return current


class RecipeBook(_Model):
    recipes: list[Recipe] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> RecipeBook:
        ids = [r.recipe_id for r in self.recipes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate recipe ids in {ids}")
        return self

    def get(self, recipe_id: str) -> Recipe:
        for r in self.recipes:
            if r.recipe_id == recipe_id:
                return r
        raise KeyError(
            f"unknown recipe {recipe_id!r}; known: {[r.recipe_id for r in self.recipes]}"
        )


# ---------------------------------------------------------------- loading


def _load_yaml(path: Path | None, default_name: str) -> tuple[dict, str]:
    if path is None:
        text = resources.files("pharma_assets.twin").joinpath("config", default_name).read_text()
        return yaml.safe_load(text), f"<built-in {default_name}>"
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    try:
        return yaml.safe_load(p.read_text()), str(p)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from e


def _validate(model: type[_Model], data: dict, origin: str) -> _Model:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{origin} is invalid: {problems}") from e


def load_plant(path: Path | str | None = None) -> PlantConfig:
    """Load and validate a plant file (the built-in demo plant when ``path`` is None)."""
    data, origin = _load_yaml(Path(path) if path else None, "plant_default.yaml")
    return _validate(PlantConfig, data, origin)  # type: ignore[return-value]


def load_recipes(path: Path | str | None = None) -> RecipeBook:
    """Load and validate a recipe book (the built-in recipes when ``path`` is None)."""
    data, origin = _load_yaml(Path(path) if path else None, "recipes_default.yaml")
    return _validate(RecipeBook, data, origin)  # type: ignore[return-value]
