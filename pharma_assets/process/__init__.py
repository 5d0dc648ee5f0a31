"""The ground floor of process knowledge: vocabulary (phases, tags, CPPs) and the gas
balance. Imports nothing from the simulator, the lake, the models or Dagster, so every
layer may import it."""

from .gas import our_cer, our_cer_columns
from .vocabulary import (
    BIOREACTOR,
    CANONICAL_TAGS,
    DEFAULT_UNIT_CLASS,
    PHASES,
    TAG_GROUPS,
    SpecLike,
    TagDef,
    UnitClass,
    allowed_tags,
    builtin_unit_classes,
    canonical_uoms,
    condition_tags,
    cpp_tags,
    load_unit_class,
    phases,
    process_tags,
)

__all__ = [
    "BIOREACTOR",
    "CANONICAL_TAGS",
    "DEFAULT_UNIT_CLASS",
    "PHASES",
    "TAG_GROUPS",
    "SpecLike",
    "TagDef",
    "UnitClass",
    "allowed_tags",
    "builtin_unit_classes",
    "canonical_uoms",
    "condition_tags",
    "cpp_tags",
    "load_unit_class",
    "our_cer",
    "our_cer_columns",
    "phases",
    "process_tags",
]
