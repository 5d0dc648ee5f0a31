"""Raw-material CoA path: the landed format, the contract, bad values quarantined with their
reason, counts that reconcile, and the Dagster assets on a real instance."""

from __future__ import annotations

import csv
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from pharma_assets.lake import bronze, material_lots
from pharma_assets.lake.landing_scan import files_for_source, route
from pharma_assets.lake.storage import Lake
from pharma_assets.twin.coa import ASSAYS, COA_COLUMNS, certificates, write_certificates
from pharma_assets.twin.config import load_plant, load_recipes
from pharma_assets.twin.plant import plan_history


@pytest.fixture(scope="module")
def plan():
    return plan_history(load_plant().with_units(2), load_recipes(), 14, seed=3)


def _ingest(lake: Lake, landing: Path) -> tuple[bronze.IngestReport, dict]:
    rep = bronze.ingest_files(lake, landing, "coa", files_for_source(landing, "coa"), "t")
    return rep, material_lots.build_material_lots(lake)


def test_coa_format_one_file_per_document(plan, tmp_path: Path) -> None:
    paths = write_certificates(plan, tmp_path / "landing")
    docs = certificates(plan)
    assert len(paths) == len(docs)
    media = {b.lots["media_lot"] for b in plan.batches}
    feeds = {b.lots["feed_lot"] for b in plan.batches}
    assert len(paths) == 2 * (len(media) + len(feeds))  # a supplier CoA + an incoming-QC doc
    for p in paths:
        rel = p.relative_to(tmp_path / "landing").as_posix()
        assert route(rel)[:3] == ("coa", "SITE01", None)
        with p.open() as fh:
            rows = list(csv.DictReader(fh))
        assert tuple(rows[0]) == COA_COLUMNS
        assert len({r["coa_id"] for r in rows}) == 1 and len({r["issuer"] for r in rows}) == 1
        assert all(r["tested_ts"].endswith("Z") for r in rows)
    # every result is tested before the lot's first use
    first_use: dict[str, object] = {}
    for b in plan.batches:
        for lot in (b.lots["media_lot"], b.lots["feed_lot"]):
            first_use[lot] = min(first_use.get(lot, b.start), b.start)
    assert all(r["tested_ts"] < first_use[r["lot_id"]] for d in docs for r in d)
    # the same seed gives the same certificates; they do not disturb the plan's other draws
    again = certificates(plan_history(load_plant().with_units(2), load_recipes(), 14, seed=3))
    assert again == docs


def test_coa_noise_is_the_documented_assay_noise() -> None:
    plan = plan_history(load_plant().with_units(6), load_recipes(), 600, seed=8)
    docs = certificates(plan)
    lots = {}
    for b in plan.batches:
        lots[b.lots["media_lot"]] = b.lot_attributes
        lots[b.lots["feed_lot"]] = b.lot_attributes
    for a in ASSAYS:
        rows = [
            r
            for d in docs
            for r in d
            if r["attribute"] == a.attribute
            and r["issuer"] == a.issuer
            and r["material"] == a.material
        ]
        true = [lots[r["lot_id"]][a.truth] * a.scale for r in rows]
        err = [
            (r["value"] - t) / (t if a.cv else 1.0)
            for r, t in zip(rows, true, strict=True)
            if r["value"] < 1000
        ]
        sd = float(pl.Series(err).std())
        want = a.cv or a.sd
        assert 0.6 * want < sd < 1.4 * want, (a.attribute, a.issuer, sd, want)


def test_contract_accepts_the_simulated_certificates_and_reconciles(plan, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    write_certificates(plan, landing)
    lake = Lake.at(tmp_path / "lake")
    _, res = _ingest(lake, landing)
    n = sum(len(d) for d in certificates(plan))
    bronze_rows = lake.read("bronze", "coa")
    assert bronze_rows is not None and bronze_rows.height == n
    assert res["rows_in"] == n == res["results"] + res["quarantined"] + res["superseded"]
    silver = lake.read("silver", "material_lots")
    assert silver is not None and silver.height == res["results"]
    # the only quarantined simulated results are the documented unit slips (mg/L for g/L)
    q = lake.read("silver", "material_lot_quarantine")
    assert q is not None
    assert set(q["failed_check"].to_list()) <= {"physical_limits"}
    assert (q["value"] > 1000).all()


def _write(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COA_COLUMNS)
        w.writerows(rows)


GOOD = ["COA-MED-260009-Q", "SITE01", "MED-260009", "media", "site_qc", "2026-01-02T08:00:00Z"]


def test_bad_coa_values_quarantined_with_reason(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    rows = [
        [*GOOD, "glucose_g_l", "6.02", "g/L", "YSI"],  # good
        [*GOOD, "osmolality_mosm_kg", "296", "mOsm/L", "osmometry"],  # wrong_uom
        [*GOOD, "growth_promotion_pct", "abc", "%", "use test"],  # type_error
        [*GOOD, "growth_promotion_pct_x", "98", "%", "use test"],  # unknown_attribute
        [*GOOD, "manganese_ppb", "-4", "ppb", "ICP-MS"],  # physical_limits
        [
            "COA-MED-260010-Q",
            "SITE01",
            "MED-260010",
            "media",
            "site_qc",
            "2026-01-02T08:00:00Z",
            "glucose_g_l",
            "NaN",
            "g/L",
            "YSI",
        ],  # value_not_finite
        [
            "COA-X-Q",
            "SITE01",
            "MED-12",
            "media",
            "site_qc",
            "2026-01-02T08:00:00Z",
            "glucose_g_l",
            "6.1",
            "g/L",
            "YSI",
        ],  # invalid_lot_id
        [
            "COA-Y-Q",
            "SITE01",
            "FEED-260001",
            "feed",
            "vendor",
            "2026-01-02T08:00:00Z",
            "glucose_pct_label",
            "101",
            "%",
            "YSI",
        ],  # unknown_issuer
        [
            "COA-Z-Q",
            "SITE01",
            "RES-260001",
            "resin",
            "site_qc",
            "2026-01-02T08:00:00Z",
            "purity",
            "99",
            "%",
            "HPLC",
        ],  # unknown_material
        [
            "",
            "SITE01",
            "FEED-260002",
            "feed",
            "site_qc",
            "2026-01-02T08:00:00Z",
            "glucose_pct_label",
            "99",
            "%",
            "YSI",
        ],  # missing_field
    ]
    _write(landing / "coa" / "SITE01" / "20260102T080000Z_00001.csv", rows)
    lake = Lake.at(tmp_path / "lake")
    _, res = _ingest(lake, landing)
    q = lake.read("silver", "material_lot_quarantine")
    good = lake.read("silver", "material_lots")
    assert q is not None and good is not None
    assert res["rows_in"] == len(rows) == res["results"] + res["quarantined"] + res["superseded"]
    assert res["superseded"] == 0 and res["quarantined"] == len(rows) - 1
    got = dict(
        zip(q["coa_id"].fill_null("-") + "/" + q["attribute"], q["failed_check"], strict=True)
    )
    got = {k.split("/")[1]: v for k, v in got.items() if k.startswith("COA-MED-260009")}
    assert got["osmolality_mosm_kg"] == "wrong_uom"
    assert got["growth_promotion_pct"] == "type_error"
    assert got["growth_promotion_pct_x"] == "unknown_attribute"
    assert got["manganese_ppb"] == "physical_limits"
    reasons = set(q["failed_check"].to_list())
    assert {
        "value_not_finite",
        "invalid_lot_id",
        "unknown_issuer",
        "unknown_material",
        "missing_field",
    } <= reasons
    assert q.filter(pl.col("failed_check") == "physical_limits")["offending_value"].to_list() == [
        "-4.0"
    ]
    assert q.filter(pl.col("failed_check") == "wrong_uom")["offending_value"].to_list() == [
        "mOsm/L"
    ]
    # no quarantined result reaches silver
    assert good.height == res["results"] == 1 and good["value"].to_list() == [6.02]
    assert good.join(q, on=["coa_id", "attribute"], how="semi").height == 0


def test_assets_materialize_on_a_real_instance(plan, tmp_path: Path) -> None:
    from pharma_assets.defs.lakehouse.material_assets import bronze_coa, silver_material_lots
    from pharma_assets.defs.lakehouse.resources import LakehouseResource
    from pharma_assets.lake import progress
    from pharma_assets.lake.landing_scan import scan_landing

    landing = tmp_path / "landing"
    write_certificates(plan, landing)
    res = LakehouseResource(landing_dir=str(landing), lake_uri=str(tmp_path / "lake"))
    lake = res.lake()
    assert {f.rel for f in progress.unfinished(lake, scan_landing(landing))} == {
        f.rel for f in scan_landing(landing)
    }
    with dg.instance_for_test() as inst:
        out = dg.materialize(
            [bronze_coa, silver_material_lots], instance=inst, resources={"lakehouse": res}
        )
        assert out.success
    # every CoA file is done: the landing sensor requests nothing more for them
    assert progress.unfinished(lake, scan_landing(landing)) == []
    assert lake.read("silver", "material_lots") is not None
