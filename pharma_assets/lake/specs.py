"""The CPP specification file: typed, validated, with unit conversions and phase limits."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pharma_assets.errors import ConfigError
from pharma_assets.process.vocabulary import PHASES

DEFAULT_SPEC = Path(__file__).parent / "specs" / "cpp_spec.yaml"

Range = tuple[float, float]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Model):
    target: float | None = None
    nor: Range | None = None
    par: Range | None = None

    @model_validator(mode="after")
    def _nested(self) -> Limits:
        for name in ("nor", "par"):
            r = getattr(self, name)
            if r is not None and r[0] > r[1]:
                raise ValueError(f"{name} lower bound {r[0]} is above its upper bound {r[1]}")
        if (
            self.nor
            and self.par
            and not (self.par[0] <= self.nor[0] and self.nor[1] <= self.par[1])
        ):
            raise ValueError(f"NOR {self.nor} must lie inside PAR {self.par}")
        return self


class TagSpec(Limits):
    uom: str
    cpp: bool = False
    physical: Range
    phases: dict[str, Limits] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> TagSpec:
        if self.physical[0] >= self.physical[1]:
            raise ValueError(f"physical limits {self.physical} are empty")
        if self.cpp and (self.nor is None or self.par is None):
            raise ValueError("a CPP needs nor and par")
        for ph in self.phases:
            if ph not in PHASES:
                raise ValueError(f"unknown phase {ph!r}; phases are {PHASES}")
        return self

    def limits(self, phase: str | None) -> Limits:
        return self.phases.get(phase or "", Limits(target=self.target, nor=self.nor, par=self.par))


class LabSpec(_Model):
    uom: str
    physical: Range
    spec: tuple[float | None, float | None] | None = None


class LabSpecs(_Model):
    in_process: dict[str, LabSpec]
    release: dict[str, LabSpec]


class ChangeLogEntry(_Model):
    version: int
    date: str
    by: str
    reason: str


#: the phase a one-phase rule gives a whole batch (a unit class without phases)
ONE_PHASE = "batch"
ALL_PHASES: tuple[str, ...] = (*PHASES, ONE_PHASE)


class RftRule(_Model):
    """Right first time: complete, no major excursion, and every required release assay
    reported and within its specification. ``required_assays``: ``all`` (every release
    assay of the spec), ``reported`` (the site's assay panel: every release assay reported
    for any batch of the lake, so a titer-only site is judged on titer), or a list."""

    required_assays: Literal["all", "reported"] | list[str] = "reported"
    max_major_excursions: int = Field(default=0, ge=0)


class PhaseRule(_Model):
    """Phases of batches whose MES records no phase events: ``none`` (no phase; CPPs are
    not judged), ``one_phase`` (the whole batch is phase ``batch``, judged against the
    tag's base limits) or ``time_since_start`` (``starts_h``: phase -> hours after start)."""

    kind: Literal["none", "one_phase", "time_since_start"] = "one_phase"
    starts_h: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> PhaseRule:
        if self.kind == "time_since_start":
            if not self.starts_h:
                raise ValueError("time_since_start needs starts_h (phase: hours after start)")
            bad = [p for p in self.starts_h if p not in PHASES]
            if bad:
                raise ValueError(f"unknown phase(s) {bad}; phases are {PHASES}")
        return self

    @property
    def name(self) -> str:
        return f"rule:{self.kind}"


class CppSpec(_Model):
    version: int = Field(ge=1)
    effective_from: str
    change_log: list[ChangeLogEntry]
    settle_minutes: float = Field(ge=0)
    future_tolerance_minutes: float = Field(ge=0)
    batch_window_grace_minutes: float = Field(ge=0)
    tags: dict[str, TagSpec]
    unit_conversions: dict[str, dict[str, tuple[float, float]]]
    lab: LabSpecs
    # the product and the unit class this spec is for: a built-in class name or the path of
    # a unit class YAML (relative to the spec file); the class says which capabilities apply
    product: str | None = None
    unit_class: str = "bioreactor"
    right_first_time: RftRule = Field(default_factory=RftRule)
    phase_rule: PhaseRule = Field(default_factory=PhaseRule)

    @model_validator(mode="after")
    def _versions(self) -> CppSpec:
        if not self.change_log or self.change_log[-1].version != self.version:
            raise ValueError("the last change_log entry must describe the current version")
        for canonical in self.unit_conversions:
            if canonical not in {t.uom for t in self.tags.values()}:
                raise ValueError(f"unit_conversions for {canonical!r}, which no tag uses")
        return self

    @property
    def cpp_tags(self) -> list[str]:
        return [t for t, s in self.tags.items() if s.cpp]

    def load_unit_class(self) -> Any:
        """The spec's unit class (``pharma_assets.process.vocabulary.UnitClass``)."""
        from pharma_assets.process.vocabulary import load_unit_class

        return load_unit_class(self.unit_class)

    def required_release_assays(self, reported: set[str]) -> list[str]:
        """The release assays a batch needs for right first time, given the assays the
        site reports (``reported``)."""
        req = self.right_first_time.required_assays
        if req == "all":
            return sorted(self.lab.release)
        if req == "reported":
            return sorted(reported & set(self.lab.release)) or sorted(self.lab.release)
        return sorted(req)

    def conversion(self, tag: str, uom: str) -> tuple[float, float] | None:
        """(scale, offset) converting ``uom`` to the tag's canonical unit, None if unknown."""
        canonical = self.tags[tag].uom
        if uom == canonical:
            return (1.0, 0.0)
        return self.unit_conversions.get(canonical, {}).get(uom)

    def phase_limits_rows(self) -> list[dict[str, Any]]:
        """One row per (CPP, phase) with NOR/PAR, for joining onto readings."""
        rows = []
        for tag, s in self.tags.items():
            if not s.cpp:
                continue
            for ph in ALL_PHASES:
                lim = s.limits(ph)
                assert lim.nor is not None and lim.par is not None
                rows.append(
                    {
                        "tag": tag,
                        "phase": ph,
                        "target": lim.target,
                        "nor_lo": lim.nor[0],
                        "nor_hi": lim.nor[1],
                        "par_lo": lim.par[0],
                        "par_hi": lim.par[1],
                    }
                )
        return rows


def load_spec(path: str | Path | None = None) -> CppSpec:
    """Load and validate a spec file; errors name the file and the field."""
    p = Path(path) if path else DEFAULT_SPEC
    return _load(str(p.resolve()), p.stat().st_mtime_ns if p.exists() else 0)


@lru_cache(maxsize=8)
def _load(path: str, _mtime: int) -> CppSpec:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"CPP spec file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"CPP spec file {path} is not valid YAML: {e}") from None
    try:
        spec = CppSpec.model_validate(raw)
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"CPP spec file {path} is invalid:\n  " + "\n  ".join(lines)) from None
    uc = spec.unit_class
    if uc.endswith((".yaml", ".yml")) and not Path(uc).is_absolute():
        spec = spec.model_copy(update={"unit_class": str((Path(path).parent / uc).resolve())})
    return spec
