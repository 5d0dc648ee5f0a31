"""Which models a site's data supports: each capability trained or skipped with a reason.

What for: a plant brings the systems it has. A site without CMMS records has nothing for
predictive maintenance to learn from; one that releases on titer alone has no aggregates
target; a dryer has no culture to contaminate. ``assess`` looks at the lake (what silver and
gold hold) and says, per capability, whether it applies and, if not, why in one line. The
training assets skip what does not apply (no model trained on an absent target, none scored
on a unit class it does not apply to, so no deviation opened by it); the skips go to
``gold/model_capabilities``, the run's metadata and the Models page.

Plain Python (polars); no Dagster, MLflow or Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from pharma_assets.lake.storage import Lake
from pharma_assets.process.vocabulary import BIOREACTOR, UnitClass

#: fewest completed batches with a result for a quality target to train its model on
MIN_QUALITY_BATCHES = 8
#: fewest reference (good) batches MSPC and the golden batch are built from
MIN_REFERENCE_BATCHES = 5
#: fewest completed batches the contamination detector learns clean behaviour from
MIN_CLEAN_BATCHES = 5

#: the tags a cell-culture (bioreactor) unit carries that the contamination detector needs
CELL_CULTURE_TAGS = ("dissolved_oxygen_pct", "offgas_o2_pct", "offgas_co2_pct", "air_flow_slpm")
#: fewest CMMS failures of the declared items PdM learns from: one in the training period
#: and one in the held-out period at the very least
MIN_PDM_FAILURES = 2

PDM = "pdm"
CONTAMINATION = "contamination"
MSPC = "mspc"
QUALITY = "quality"

CAPABILITY_SCHEMA: dict[str, pl.DataType] = {
    "capability": pl.String(),
    "target": pl.String(),
    "applies": pl.Boolean(),
    "reason": pl.String(),
    "assessed_at": pl.Datetime("us", "UTC"),
    "run_id": pl.String(),
}


@dataclass(frozen=True)
class Capability:
    capability: str
    applies: bool
    reason: str
    target: str = ""

    @property
    def key(self) -> str:
        return f"{self.capability}:{self.target}" if self.target else self.capability

    def line(self) -> str:
        what = f"{self.capability} ({self.target})" if self.target else self.capability
        return f"{what}: {'trained' if self.applies else 'skipped'} - {self.reason}"


def _tags(lake: Lake) -> set[str]:
    st = lake.read("silver", "telemetry_stats", ["tag", "n"])
    if st is None:
        return set()
    return set(st.filter(pl.col("n") > 0)["tag"].unique().to_list())


def reference_batches(
    summary: pl.DataFrame | None, given: list[str] | None = None
) -> tuple[list[str], str]:
    """The batches MSPC and the golden batch are built from, and where they came from: the
    list the user gives, else the completed batches the site's right-first-time rule passes."""
    if given:
        return sorted({b.strip().upper() for b in given if b.strip()}), "reference list given"
    if summary is None or "right_first_time" not in summary.columns:
        return [], "right first time (no gold/batch_summary yet)"
    good = summary.filter(
        (pl.col("status") == "complete") & pl.col("right_first_time").fill_null(False)
    )
    return sorted(good["batch_id"].to_list()), "right first time"


def assess(
    lake: Lake,
    quality_counts: dict[str, int] | None = None,
    reference: list[str] | None = None,
    unit_class: UnitClass | None = None,
) -> list[Capability]:
    """Per capability (and per quality target: name -> completed batches with a value),
    whether the unit class declares it and the lake's data supports it, and why (not)."""
    uc = unit_class or BIOREACTOR
    out = _assess_data(lake, quality_counts, reference, uc)
    for i, c in enumerate(out):
        cap = _CLASS_CAPABILITY[c.capability]
        if c.applies and not uc.supports(cap):
            out[i] = Capability(
                c.capability,
                False,
                f"unit class {uc.name!r} does not declare {cap}: no {c.capability} model",
                c.target,
            )
    return out


_CLASS_CAPABILITY = {
    PDM: "pdm",
    CONTAMINATION: "contamination",
    MSPC: "mspc",
    QUALITY: "quality_models",
}


def _assess_data(
    lake: Lake,
    quality_counts: dict[str, int] | None,
    reference: list[str] | None,
    uc: UnitClass,
) -> list[Capability]:
    out: list[Capability] = []
    tags = _tags(lake)
    batches = lake.read("silver", "batches", ["batch_id", "status"])
    summary = lake.read("gold", "batch_summary")
    completed = 0 if batches is None else batches.filter(pl.col("status") == "complete").height

    # predictive maintenance: the class declares equipment items with condition tags, the
    # site records those tags, and the CMMS holds enough failures of those items
    out.append(_assess_pdm(lake, uc, tags))

    # contamination: cell culture only
    missing = [t for t in CELL_CULTURE_TAGS if t not in tags]
    if not uc.cell_culture:
        out.append(
            Capability(
                CONTAMINATION,
                False,
                f"unit class {uc.name!r} is not a cell culture: no contamination model",
            )
        )
    elif missing:
        out.append(
            Capability(
                CONTAMINATION,
                False,
                f"no cell-culture unit (tags {', '.join(missing)} absent): no contamination model",
            )
        )
    elif completed < MIN_CLEAN_BATCHES:
        out.append(
            Capability(
                CONTAMINATION,
                False,
                f"{completed} completed batches, fewer than "
                f"{MIN_CLEAN_BATCHES}: no contamination model",
            )
        )
    else:
        out.append(
            Capability(CONTAMINATION, True, f"cell-culture tags and {completed} completed batches")
        )

    # MSPC and golden batch: enough reference batches
    ref, how = reference_batches(summary, reference)
    if not tags:
        out.append(Capability(MSPC, False, "no telemetry in silver: no MSPC"))
    elif len(ref) < MIN_REFERENCE_BATCHES:
        out.append(
            Capability(
                MSPC,
                False,
                f"{len(ref)} reference batches ({how}), fewer than "
                f"{MIN_REFERENCE_BATCHES}: no MSPC or golden batch; give a list of "
                "reference batches (--reference-batches) or import release results",
            )
        )
    else:
        out.append(Capability(MSPC, True, f"{len(ref)} reference batches ({how})"))

    # quality models: per target, enough completed batches with a result
    for name, n in (quality_counts or {}).items():
        if n < MIN_QUALITY_BATCHES:
            out.append(
                Capability(
                    QUALITY,
                    False,
                    f"{n} completed batches with a result, fewer "
                    f"than {MIN_QUALITY_BATCHES}: no quality model",
                    target=name,
                )
            )
        else:
            out.append(
                Capability(QUALITY, True, f"{n} completed batches with a result", target=name)
            )
    return out


def _assess_pdm(lake: Lake, uc: UnitClass, tags: set[str]) -> Capability:
    """PdM applies when an item the class declares has condition tags the site records and
    the CMMS holds at least ``MIN_PDM_FAILURES`` failures of such items (by id suffix)."""
    declared = {s: d for s, d in uc.equipment.items() if d.tags}
    if not declared:
        return Capability(
            PDM, False, f"unit class {uc.name!r} declares no equipment with condition tags: no PdM"
        )
    maint = lake.read("silver", "maintenance_events", ["event_type", "equipment_id"])
    if maint is None or maint.height == 0:
        return Capability(PDM, False, "no CMMS maintenance records imported: no PdM")
    seen = {s: d for s, d in declared.items() if set(d.tags) & tags}
    if not seen:
        need = sorted({t for d in declared.values() for t in d.tags})
        return Capability(
            PDM,
            False,
            f"no telemetry of the declared equipment's condition tags ({', '.join(need)}): no PdM",
        )
    suffix = pl.col("equipment_id").str.split("-").list.last()
    fails = (
        maint.filter(pl.col("event_type") == "failure")
        .group_by(suffix.alias("suffix"))
        .len()
        .filter(pl.col("suffix").is_in(list(seen)))
    )
    counts = {s: 0 for s in seen} | dict(fails.iter_rows())
    n = sum(counts.values())
    per = ", ".join(f"{s} ({seen[s].type}): {c}" for s, c in counts.items())
    if n == 0:
        return Capability(
            PDM,
            False,
            f"{maint.height} CMMS records but no failure of a declared item ({per}) among "
            "them: nothing for PdM to learn",
        )
    if n < MIN_PDM_FAILURES:
        return Capability(
            PDM,
            False,
            f"{n} CMMS failures of the declared items ({per}), fewer than "
            f"{MIN_PDM_FAILURES}: no PdM",
        )
    return Capability(PDM, True, f"CMMS failures ({per}) and condition tags")


def find(caps: list[Capability], key: str) -> Capability:
    """The capability with this key (``pdm``, ``quality:final_titer_g_l``, ...)."""
    return next(c for c in caps if c.key == key)


def as_table(caps: list[Capability], run_id: str, now: datetime | None = None) -> pl.DataFrame:
    ts = now or datetime.now(UTC)
    return pl.DataFrame(
        [
            {
                "capability": c.capability,
                "target": c.target,
                "applies": c.applies,
                "reason": c.reason,
                "assessed_at": ts,
                "run_id": run_id,
            }
            for c in caps
        ],
        schema=CAPABILITY_SCHEMA,
    )
