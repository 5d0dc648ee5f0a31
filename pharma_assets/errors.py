"""Errors shared by every layer (the ground floor: imports nothing from the package).

``ConfigError`` used to live in ``pharma_assets.twin.config``; it is re-exported there so
old imports keep working, but the lake, the gateway and the importer take it from here and
so no longer import the simulator.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration file (plant, recipes, CPP spec, tag map, unit class...) failed
    validation; the message names the file and the field."""
