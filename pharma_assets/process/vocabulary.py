"""Process vocabulary: the phases and tags of a unit class, and which tags are CPPs.

One home for the words every layer uses (simulator, gateway, importer, lake, models,
dashboards). Two sources of truth, both data:

* the **unit class** file (``unit_classes/<name>.yaml``): phases in batch order and the tag
  dictionary (tag -> engineering unit and group: ``process`` or ``condition``), in the
  canonical column order;
* the **CPP spec** (``pharma_assets/lake/specs/cpp_spec.yaml``, per product and unit
  class): which tags are critical process parameters, with their limits.

Nothing here imports the simulator, the lake, the models or Dagster (the ground floor).
Everything is a function of a unit class (and a spec for the CPPs) rather than a module
constant, so that sites can describe their own classes as files (issue 15); the
``BIOREACTOR`` constants below are the built-in class for code that has no other.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pharma_assets.errors import ConfigError

TagGroup = Literal["process", "condition"]
#: the tag groups a unit class file may use
TAG_GROUPS: tuple[TagGroup, ...] = ("process", "condition")
#: the unit class used where none is named (the simulator's bioreactor)
DEFAULT_UNIT_CLASS = "bioreactor"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TagDef(_Model):
    """One tag of a unit class: its canonical engineering unit and its group."""

    uom: str = Field(min_length=1)
    group: TagGroup


Capability = Literal[
    "cpp_contracts",
    "excursions",
    "mspc",
    "golden_batch",
    "quality_models",
    "pdm",
    "contamination",
]
#: what a unit class may declare it supports (models skip what it does not)
CAPABILITIES: tuple[str, ...] = (
    "cpp_contracts",
    "excursions",
    "mspc",
    "golden_batch",
    "quality_models",
    "pdm",
    "contamination",
)


class EquipmentDef(_Model):
    """An equipment item of a unit class (id suffix -> its type and condition tags): what
    predictive maintenance may score, if it knows the type."""

    type: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    tags: tuple[str, ...] = ()


class Crossing(_Model):
    """A phase that begins when a tag crosses a value: at the first valid reading of ``tag``
    (in its canonical unit) above ``above`` or below ``below``, after the previous phase
    began."""

    phase: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    tag: str = Field(min_length=1)
    above: float | None = None
    below: float | None = None

    @model_validator(mode="after")
    def _one_side(self) -> Crossing:
        if (self.above is None) == (self.below is None):
            raise ValueError(f"phase {self.phase!r}: give exactly one of above / below")
        return self


class PhaseRule(_Model):
    """Phases of batches whose MES records no phase events, by a declared rule:

    * ``none``: no phase (CPPs are not judged);
    * ``one_phase``: the whole batch is phase ``batch``, judged against the base limits;
    * ``time_since_start``: ``starts_h`` (phase -> hours after the batch start);
    * ``tag_crossing``: ``first_phase`` from the start, then each of ``crossings`` in order
      (a phase begins when its tag crosses its value after the previous phase began; a
      crossing that never happens leaves the batch in the phase before it).

    The lake records the rule that produced a phase (``batch_phases.phase_source``)."""

    kind: Literal["none", "one_phase", "time_since_start", "tag_crossing"] = "one_phase"
    starts_h: dict[str, float] = Field(default_factory=dict)
    first_phase: str | None = None
    crossings: tuple[Crossing, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> PhaseRule:
        if self.kind == "time_since_start" and not self.starts_h:
            raise ValueError("time_since_start needs starts_h (phase: hours after start)")
        if self.kind == "tag_crossing" and (not self.first_phase or not self.crossings):
            raise ValueError("tag_crossing needs first_phase and crossings")
        names = self.phase_names
        if len(set(names)) != len(names):
            raise ValueError(f"a phase is named twice in the rule: {list(names)}")
        return self

    @property
    def name(self) -> str:
        return f"rule:{self.kind}"

    @property
    def phase_names(self) -> tuple[str, ...]:
        """The phases the rule can produce (``one_phase``'s ``batch`` is not listed)."""
        if self.kind == "time_since_start":
            return tuple(self.starts_h)
        if self.kind == "tag_crossing":
            return (str(self.first_phase), *(c.phase for c in self.crossings))
        return ()

    def check_phases(self, phases: tuple[str, ...], what: str) -> None:
        """ValueError unless every phase of the rule is one of ``phases`` (``what`` names them)."""
        bad = [p for p in self.phase_names if p not in phases]
        if bad:
            raise ValueError(f"phase rule: unknown phase(s) {bad}; {what} are {list(phases)}")


class UnitClass(_Model):
    """The vocabulary of one kind of unit: phases (batch order; may be empty), tags, the
    equipment items it declares and the capabilities that apply to it (contamination only
    for a cell culture)."""

    unit_class: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    phases: tuple[str, ...] = ()
    tags: dict[str, TagDef] = Field(min_length=1)
    cell_culture: bool = False
    equipment: dict[str, EquipmentDef] = Field(default_factory=dict)
    capabilities: tuple[Capability, ...] = (
        "cpp_contracts",
        "excursions",
        "mspc",
        "golden_batch",
        "quality_models",
        "pdm",
    )
    # how the phases of a batch without MES phase events are derived (a spec may override)
    phase_rule: PhaseRule | None = None
    # the batch quality targets its models forecast; None: every release assay the site
    # reports (and the built-in targets, skipped when absent)
    quality_targets: tuple[str, ...] | None = None
    # the batch features its quality models train on: ``bioreactor`` (the built-in class's
    # cell-culture features), ``generic`` (per-tag, per-phase statistics of whatever tags the
    # class and the site declare, ``ml/features/generic.py``); None: ``bioreactor`` for the
    # built-in bioreactor class, ``generic`` for every other class
    quality_features: Literal["bioreactor", "generic"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> UnitClass:
        if self.phase_rule is not None:
            self.phase_rule.check_phases(self.phases, f"the phases of class {self.unit_class}")
            unknown = [c.tag for c in self.phase_rule.crossings if c.tag not in self.tags]
            if unknown:
                raise ValueError(f"phase_rule: crossing tags {unknown} are not tags of the class")
        if "contamination" in self.capabilities and not self.cell_culture:
            raise ValueError("contamination applies only to a cell culture (cell_culture: true)")
        for eq, d in self.equipment.items():
            unknown = [t for t in d.tags if t not in self.tags]
            if unknown:
                raise ValueError(f"equipment {eq}: tags {unknown} are not tags of the class")
        return self

    @property
    def generic_quality_features(self) -> bool:
        """Whether its quality models use the generic per-tag features (``quality_features``)."""
        if self.quality_features is not None:
            return self.quality_features == "generic"
        return self.unit_class != DEFAULT_UNIT_CLASS

    def supports(self, capability: str) -> bool:
        """Whether the class declares ``capability`` (one of ``CAPABILITIES``)."""
        return capability in self.capabilities

    @field_validator("phases")
    @classmethod
    def _unique_phases(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate phases in {list(v)}")
        return v

    @field_validator("tags")
    @classmethod
    def _tag_names(cls, v: dict[str, TagDef]) -> dict[str, TagDef]:
        bad = [t for t in v if not t.replace("_", "").isalnum() or not t[0].isalpha()]
        if bad:
            raise ValueError(f"tag names must be letters, digits and '_': {bad}")
        return v

    @property
    def name(self) -> str:
        return self.unit_class

    @property
    def tag_names(self) -> tuple[str, ...]:
        """Every tag, in the canonical column order."""
        return tuple(self.tags)

    @property
    def uoms(self) -> dict[str, str]:
        """Tag -> canonical engineering unit, in the canonical order."""
        return {t: d.uom for t, d in self.tags.items()}

    def group(self, group: TagGroup) -> tuple[str, ...]:
        """The tags of one group, in the canonical order."""
        if group not in TAG_GROUPS:
            raise ValueError(f"unknown tag group {group!r}; groups are {list(TAG_GROUPS)}")
        return tuple(t for t, d in self.tags.items() if d.group == group)

    @property
    def process_tags(self) -> tuple[str, ...]:
        """The process state and its control (what MSPC, the golden batch and the batch
        features monitor)."""
        return self.group("process")

    @property
    def condition_tags(self) -> tuple[str, ...]:
        """Equipment health signals (what predictive maintenance reads)."""
        return self.group("condition")


class _CppFlag(Protocol):
    @property
    def cpp(self) -> bool: ...


class SpecLike(Protocol):
    """What the vocabulary needs of a CPP spec (``pharma_assets.lake.specs.CppSpec``):
    its tags, each with a ``cpp`` flag."""

    @property
    def tags(self) -> Mapping[str, _CppFlag]: ...


def unit_class_dir() -> Path:
    """The folder of the built-in unit class files."""
    return Path(str(resources.files("pharma_assets.process").joinpath("unit_classes")))


def builtin_unit_classes() -> list[str]:
    """Names of the built-in unit classes (one YAML file each)."""
    return sorted(p.stem for p in unit_class_dir().glob("*.yaml"))


def load_unit_class(name_or_path: str | Path = DEFAULT_UNIT_CLASS) -> UnitClass:
    """A unit class by built-in name (``"bioreactor"``) or from a YAML file path.

    Raises :class:`~pharma_assets.errors.ConfigError` naming the file and the field.
    """
    s = str(name_or_path)
    is_path = isinstance(name_or_path, Path) or s.endswith((".yaml", ".yml")) or "/" in s
    if is_path:
        p = Path(s)
    else:
        p = unit_class_dir() / f"{s}.yaml"
        if not p.exists():
            raise ConfigError(
                f"unknown unit class {s!r}; built-in classes are {builtin_unit_classes()} "
                "(or pass the path of a unit class YAML file)"
            )
    p = p.resolve()
    return _load(str(p), p.stat().st_mtime_ns if p.exists() else 0)


@lru_cache(maxsize=16)
def _load(path: str, _mtime: int) -> UnitClass:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"unit class file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"unit class file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"unit class file {path} must be a YAML mapping")
    try:
        return UnitClass.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"unit class file {path} is invalid: {problems}") from None


def _resolve(unit_class: UnitClass | str | Path | None) -> UnitClass:
    if isinstance(unit_class, UnitClass):
        return unit_class
    return load_unit_class(unit_class if unit_class is not None else DEFAULT_UNIT_CLASS)


def phases(unit_class: UnitClass | str | Path | None = None) -> tuple[str, ...]:
    """The phases of a unit class in batch order (empty for a class without phases)."""
    return _resolve(unit_class).phases


def process_tags(unit_class: UnitClass | str | Path | None = None) -> tuple[str, ...]:
    """The process tags of a unit class (canonical order)."""
    return _resolve(unit_class).process_tags


def condition_tags(unit_class: UnitClass | str | Path | None = None) -> tuple[str, ...]:
    """The equipment-condition tags of a unit class (canonical order)."""
    return _resolve(unit_class).condition_tags


def canonical_uoms(unit_class: UnitClass | str | Path | None = None) -> dict[str, str]:
    """Tag -> canonical engineering unit for every tag of a unit class."""
    return _resolve(unit_class).uoms


def cpp_tags(spec: SpecLike, unit_class: UnitClass | str | Path | None = None) -> tuple[str, ...]:
    """The tags the CPP spec marks ``cpp: true``, in the unit class's canonical order.

    Raises ConfigError when the spec names a CPP the unit class does not have.
    """
    uc = _resolve(unit_class)
    flagged = {t for t, s in spec.tags.items() if s.cpp}
    unknown = sorted(flagged - set(uc.tags))
    if unknown:
        raise ConfigError(
            f"the CPP spec names CPPs {unknown} that unit class {uc.name!r} does not have "
            f"(its tags: {list(uc.tags)})"
        )
    return tuple(t for t in uc.tags if t in flagged)


def allowed_tags(
    unit_class: UnitClass | str | Path | None,
    spec_uoms: Mapping[str, str],
    site_uoms: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Tag -> engineering unit of every tag silver accepts for units of a class: the CPP
    spec's tags (their units and limits rule), then the class's tags the spec does not
    list, then the site's own tags (declared in its tag map, ``process.site_tags``) that
    neither knows. A tag outside this set is quarantined (``unknown_tag``)."""
    uc = _resolve(unit_class)
    out = dict(spec_uoms)
    for t, u in (*uc.uoms.items(), *(site_uoms or {}).items()):
        out.setdefault(t, u)
    return out


#: The built-in bioreactor class (what the simulator produces).
BIOREACTOR: UnitClass = load_unit_class(DEFAULT_UNIT_CLASS)
#: Its phases, in batch order.
PHASES: tuple[str, ...] = BIOREACTOR.phases
#: Its tag dictionary: tag -> canonical unit, in the canonical column order.
CANONICAL_TAGS: dict[str, str] = BIOREACTOR.uoms
