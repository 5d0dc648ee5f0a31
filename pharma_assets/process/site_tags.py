"""A site's own tags: tags its tag map declares (with an engineering unit) that its unit class
and CPP spec do not know.

The telemetry importer records them in the landing zone, one file per site
(``<landing>/site_tags/<site_id>.yaml``: tag -> unit, with the source column and the tag map
they came from). The pipeline reads them with the spec (``CppSpec.for_site``): a declared
site tag is an allowed tag of silver, kept as a numeric reading in its declared unit
(no limits: not a CPP, never an excursion), charted and monitored by MSPC like the class's
tags. A tag that is in neither the unit class, the spec nor any site declaration is
quarantined (``unknown_tag``).

Plain files on the ground floor: no lake, no Dagster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import yaml

from pharma_assets.errors import ConfigError

#: the landing-zone folder of site tag declarations (configuration, not landed data)
SITE_TAGS_DIR = "site_tags"


def _read(path: Path) -> dict[str, dict[str, str]]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"site tag file {path} is not valid YAML: {e}") from None
    tags = raw.get("tags") if isinstance(raw, dict) else None
    if not isinstance(tags, dict) or not all(
        isinstance(d, dict) and isinstance(d.get("uom"), str) and d["uom"] for d in tags.values()
    ):
        raise ConfigError(f"site tag file {path}: 'tags' must map each tag to {{uom: <unit>}}")
    return {str(t): {k: str(v) for k, v in d.items()} for t, d in tags.items()}


def read_site_tags(landing: str | Path | None) -> dict[str, str]:
    """Tag -> engineering unit of every site tag declared in the landing zone (all sites).

    Raises ConfigError when two sites declare one tag with different units.
    """
    if landing is None:
        return {}
    folder = Path(landing) / SITE_TAGS_DIR
    if not folder.is_dir():
        return {}
    out: dict[str, str] = {}
    where: dict[str, Path] = {}
    for p in sorted(folder.glob("*.yaml")):
        for tag, d in _read(p).items():
            if tag in out and out[tag] != d["uom"]:
                raise ConfigError(
                    f"site tag {tag!r} is declared in {d['uom']!r} by {p} and in "
                    f"{out[tag]!r} by {where[tag]}: one tag, one engineering unit"
                )
            out[tag], where[tag] = d["uom"], p
    return out


def declare_site_tags(
    landing: str | Path,
    site_id: str,
    tags: Mapping[str, str],
    sources: Mapping[str, str] | None = None,
    tag_map: str | None = None,
) -> Path | None:
    """Record ``tags`` (tag -> unit) as site tags of ``site_id`` in the landing zone; the
    site's earlier declarations are kept. ``sources``: tag -> source column (for the record).

    Raises ConfigError, before writing, when a tag is already declared (by any site) in
    another unit: the readings already landed would change meaning.
    """
    if not tags:
        return None
    known = read_site_tags(landing)
    clash = {t: (known[t], u) for t, u in tags.items() if t in known and known[t] != u}
    if clash:
        raise ConfigError(
            "site tag(s) already declared in another unit (landing "
            f"{Path(landing) / SITE_TAGS_DIR}): "
            + ", ".join(f"{t}: {a!r}, now {b!r}" for t, (a, b) in sorted(clash.items()))
            + "; map the tag under another name or convert to the declared unit"
        )
    folder = Path(landing) / SITE_TAGS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    site_id = re.sub(r"[^A-Za-z0-9_-]", "_", site_id) or "site"
    path = folder / f"{site_id}.yaml"
    mine = _read(path) if path.exists() else {}
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for t, u in tags.items():
        if t in mine:
            continue
        entry = {"uom": u, "declared_at": now}
        if sources and t in sources:
            entry["source"] = sources[t]
        if tag_map:
            entry["tag_map"] = tag_map
        mine[t] = entry
    tmp = folder / f".{site_id}.yaml.tmp"
    tmp.write_text(
        "# Site tags declared by this site's tag map (pharma-twin import): kept in silver as\n"
        "# readings of their unit, charted and monitored by MSPC. docs/bring_your_own_data.md\n"
        + yaml.safe_dump({"site_id": site_id, "tags": mine}, sort_keys=False)
    )
    tmp.replace(path)
    return path
