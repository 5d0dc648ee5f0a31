"""Certificates of analysis (CoA) of the raw-material lots, as a LIMS exports them.

Every media and feed lot the plan uses gets two documents:

* the **supplier CoA**, tested at manufacture (20-60 days before the lot's first use), and
* the site's **incoming-QC** results (3-10 days before first use, before the lot is released
  to production),

each result measured from the lot's true attributes (``BatchPlan.lot_attributes``) with the
assay noise of its method (``ASSAYS``; sources in docs/process_model.md, "Raw-material
certificates of analysis"), rounded to the reported precision. A small share of supplier
results carries a unit slip (a glucose reported in mg/L under the g/L header), which the
lake's contract must quarantine.

The noise has its own random stream (``[seed, COA_STREAM]``), so adding certificates does
not change any other output of a seeded plant: the CoA of an existing plant can be written
afterwards from its plan (``write_certificates(plan_history(...), ...)``).

Layout: ``<landing>/coa/<site_id>/<YYYYmmddTHHMMSSZ>_<seq:05d>.csv``, one file per document.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from .landing import chunk_path
from .plant import PlantPlan

COA_COLUMNS = (
    "coa_id",
    "site_id",
    "lot_id",
    "material",
    "issuer",
    "tested_ts",
    "attribute",
    "value",
    "uom",
    "method",
)
COA_STREAM = 0xC0A  # the certificates' own random stream
UNIT_SLIP_SHARE = 0.01  # supplier results transcribed in mg/L under a g/L header


@dataclass(frozen=True)
class Assay:
    """One reported result: which true lot attribute it measures and how well."""

    material: str  # media | feed
    issuer: str  # supplier | site_qc
    attribute: str  # reported name (with unit)
    uom: str
    truth: str  # key of BatchPlan.lot_attributes
    scale: float  # reported = truth * scale (+ offset) before noise
    cv: float  # relative noise sd (0 when `sd` is used)
    sd: float  # absolute noise sd
    decimals: int
    method: str


# Documented in docs/process_model.md with the source of each precision figure.
ASSAYS: tuple[Assay, ...] = (
    Assay(
        "media",
        "supplier",
        "glucose_g_l",
        "g/L",
        "media_glucose_factor",
        6.0,
        0.02,
        0.0,
        2,
        "enzymatic glucose (GOD-POD)",
    ),
    Assay(
        "media",
        "supplier",
        "osmolality_mosm_kg",
        "mOsm/kg",
        "media_osmolality_mosm_kg",
        1.0,
        0.0,
        3.0,
        0,
        "freezing-point osmometry",
    ),
    Assay("media", "supplier", "manganese_ppb", "ppb", "media_mn_ppb", 1.0, 0.05, 0.0, 1, "ICP-MS"),
    Assay(
        "media",
        "site_qc",
        "glucose_g_l",
        "g/L",
        "media_glucose_factor",
        6.0,
        0.015,
        0.0,
        2,
        "glucose analyser (YSI)",
    ),
    Assay(
        "media",
        "site_qc",
        "osmolality_mosm_kg",
        "mOsm/kg",
        "media_osmolality_mosm_kg",
        1.0,
        0.0,
        2.0,
        0,
        "freezing-point osmometry",
    ),
    Assay(
        "media",
        "site_qc",
        "growth_promotion_pct",
        "%",
        "media_growth_potency",
        100.0,
        0.04,
        0.0,
        1,
        "small-scale use test: specific growth rate vs reference lot",
    ),
    Assay(
        "feed",
        "supplier",
        "glucose_pct_label",
        "%",
        "feed_concentration_factor",
        100.0,
        0.02,
        0.0,
        1,
        "enzymatic glucose (GOD-POD), % of label claim",
    ),
    Assay(
        "feed",
        "supplier",
        "glutamine_pct_label",
        "%",
        "feed_concentration_factor",
        100.0,
        0.03,
        0.0,
        1,
        "HPLC amino acids, % of label claim",
    ),
    Assay(
        "feed",
        "site_qc",
        "glucose_pct_label",
        "%",
        "feed_concentration_factor",
        100.0,
        0.015,
        0.0,
        1,
        "glucose analyser (YSI), % of label claim",
    ),
    Assay(
        "feed",
        "site_qc",
        "productivity_use_test_pct",
        "%",
        "feed_productivity_factor",
        100.0,
        0.05,
        0.0,
        1,
        "small-scale use test: specific productivity vs reference lot",
    ),
)
SUPPLIERS = {"media": "CellMedia GmbH", "feed": "FeedTech Inc."}


def lots_of(plan: PlantPlan) -> dict[str, dict[str, Any]]:
    """Each media/feed lot the plan uses: its material, true attributes and first use."""
    lots: dict[str, dict[str, Any]] = {}
    for b in plan.batches:
        for material, key in (("media", "media_lot"), ("feed", "feed_lot")):
            lot = b.lots.get(key)
            if lot is None:
                continue
            rec = lots.setdefault(
                lot,
                {
                    "material": material,
                    "site_id": b.site_id,
                    "first_use": b.start,
                    "attrs": b.lot_attributes,
                },
            )
            if b.start < rec["first_use"]:
                rec["first_use"], rec["attrs"] = b.start, b.lot_attributes
    return lots


def certificates(plan: PlantPlan) -> list[list[dict[str, Any]]]:
    """The CoA documents of every lot (a list of result rows per document), in lot order."""
    rng = np.random.default_rng([plan.seed, COA_STREAM])
    docs: list[list[dict[str, Any]]] = []
    for lot, rec in sorted(lots_of(plan).items()):
        first: datetime = rec["first_use"]
        for issuer, days in (("supplier", (20.0, 60.0)), ("site_qc", (3.0, 10.0))):
            tested = first - timedelta(days=float(rng.uniform(*days)))
            tested = tested.replace(second=0, microsecond=0)
            rows = []
            for a in ASSAYS:
                if a.material != rec["material"] or a.issuer != issuer:
                    continue
                true = float(rec["attrs"][a.truth]) * a.scale
                noise = a.sd if a.sd else a.cv * abs(true)
                value = round(true + float(rng.normal(0.0, noise)), a.decimals)
                if issuer == "supplier" and a.uom == "g/L" and rng.random() < UNIT_SLIP_SHARE:
                    value = round(value * 1000.0, 0)  # mg/L under the g/L header
                rows.append(
                    {
                        "coa_id": f"COA-{lot}-{'S' if issuer == 'supplier' else 'Q'}",
                        "site_id": rec["site_id"],
                        "lot_id": lot,
                        "material": a.material,
                        "issuer": issuer,
                        "tested_ts": tested,
                        "attribute": a.attribute,
                        "value": value,
                        "uom": a.uom,
                        "method": a.method,
                    }
                )
            docs.append(rows)
    return docs


def write_coa_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """One CoA document as the LIMS exports it (UTC ISO times with Z), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COA_COLUMNS)
        for r in rows:
            w.writerow([_cell(r[c]) for c in COA_COLUMNS])
    os.replace(tmp, path)
    return path


def _cell(v: Any) -> Any:
    return v.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(v, datetime) else v


def write_certificates(plan: PlantPlan, out: Path) -> list[Path]:
    """Write every lot's supplier CoA and incoming-QC document into the landing zone."""
    docs = sorted(certificates(plan), key=lambda d: (d[0]["tested_ts"], d[0]["coa_id"]))
    paths = []
    for seq, rows in enumerate(docs, start=1):
        r0 = rows[0]
        p = chunk_path(Path(out), "coa", r0["site_id"], None, r0["tested_ts"], seq, "csv")
        paths.append(write_coa_csv(p, rows))
    return paths
