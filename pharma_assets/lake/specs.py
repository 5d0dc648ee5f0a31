"""The CPP specification file: typed, validated, with unit conversions and phase limits."""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pharma_assets.errors import ConfigError
from pharma_assets.process.vocabulary import PHASES, PhaseRule

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
        return self  # (phase names are checked against the unit class: load_spec)

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
#: the bioreactor's phase names (``CppSpec.phase_names`` gives any spec's)
ALL_PHASES: tuple[str, ...] = (*PHASES, ONE_PHASE)


def _phase_names(unit_class: str) -> tuple[str, ...]:
    from pharma_assets.process.vocabulary import load_unit_class

    phases = load_unit_class(unit_class).phases
    return (*phases, ONE_PHASE) if ONE_PHASE not in phases else tuple(phases)


class RftRule(_Model):
    """Right first time: complete, no major excursion, and every required release assay
    reported and within its specification. ``required_assays``: ``all`` (every release
    assay of the spec), ``reported`` (the site's assay panel: every release assay reported
    for any batch of the lake, so a titer-only site is judged on titer), or a list."""

    required_assays: Literal["all", "reported"] | list[str] = "reported"
    max_major_excursions: int = Field(default=0, ge=0)


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
    # phases of batches without MES phase events; None: the unit class's rule, else one_phase
    phase_rule: PhaseRule | None = None
    # phases Cpk is computed over (each against its PAR; a batch's Cpk is the lowest);
    # None: production (and batch) for a class with a production phase, else every phase
    cpk_phases: tuple[str, ...] | None = None

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

    @property
    def rule(self) -> PhaseRule:
        """The phase rule in force: the spec's, else the unit class's, else one phase."""
        if self.phase_rule is not None:
            return self.phase_rule
        return self.load_unit_class().phase_rule or PhaseRule()

    @property
    def phase_names(self) -> tuple[str, ...]:
        """Every phase name silver may give a reading: the unit class's phases (batch
        order) and ``batch`` (one phase per batch). Their position is the phase index."""
        return _phase_names(self.unit_class)

    @property
    def cpk_phase_names(self) -> tuple[str, ...]:
        """The phases Cpk is computed over (``cpk_phases``, or the default: see the field)."""
        if self.cpk_phases is not None:
            return self.cpk_phases
        names = self.phase_names
        return ("production", ONE_PHASE) if "production" in names else names

    def for_site(self, site_uoms: Mapping[str, str] | None = None) -> CppSpec:
        """This spec with every tag silver accepts (``process.vocabulary.allowed_tags``):
        the unit class's tags the spec does not list and the site's own declared tags are
        added after the spec's, in their unit, without limits (not CPPs: kept, charted and
        monitored, never judged). The spec's version is unchanged: nothing it judges moves."""
        from pharma_assets.process.vocabulary import allowed_tags

        extra = {
            t: u
            for t, u in allowed_tags(
                self.unit_class, {t: s.uom for t, s in self.tags.items()}, site_uoms
            ).items()
            if t not in self.tags
        }
        if not extra:
            return self
        free = (-math.inf, math.inf)
        tags = {**self.tags, **{t: TagSpec(uom=u, physical=free) for t, u in extra.items()}}
        return self.model_copy(update={"tags": tags})

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
            for ph in self.phase_names:
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


def load_spec(path: str | Path | None = None, landing: str | Path | None = None) -> CppSpec:
    """Load and validate a spec file; errors name the file and the field.

    With ``landing`` (the landing zone), the spec as silver applies it there
    (``CppSpec.for_site``): plus the unit class's other tags and the site tags declared
    by the importer (``<landing>/site_tags/``)."""
    p = Path(path) if path else DEFAULT_SPEC
    spec = _load(str(p.resolve()), p.stat().st_mtime_ns if p.exists() else 0)
    if landing is None:
        return spec
    from pharma_assets.process.site_tags import read_site_tags

    return spec.for_site(read_site_tags(landing))


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
    _check_phases(spec, path)
    return spec


def _check_phases(spec: CppSpec, path: str) -> None:
    """Phase names of the spec (per-phase limits, phase rule, Cpk phases) against its unit
    class; crossing tags against the spec's and the class's tags. ConfigError naming them."""
    names = spec.phase_names
    what = f"the phases of unit class {Path(spec.unit_class).stem!r}"
    problems = [
        f"tags.{t}.phases: unknown phase {ph!r}; {what} are {list(names)}"
        for t, s in spec.tags.items()
        for ph in s.phases
        if ph not in names
    ]
    problems += [
        f"cpk_phases: unknown phase {ph!r}; {what} are {list(names)}"
        for ph in spec.cpk_phases or ()
        if ph not in names
    ]
    if spec.phase_rule is not None:
        try:
            spec.phase_rule.check_phases(names, what)
        except ValueError as e:
            problems.append(str(e))
        known = set(spec.tags) | set(spec.load_unit_class().tags)
        problems += [
            f"phase_rule: crossing tag {c.tag!r} is neither a spec tag nor a class tag"
            for c in spec.phase_rule.crossings
            if c.tag not in known
        ]
    if problems:
        raise ConfigError(f"CPP spec file {path} is invalid:\n  " + "\n  ".join(problems))
