"""What keeps the cost of one new chunk flat as the lake grows (docs/benchmarks.md, target 2).

Three properties, each checked on real Delta tables: file statistics are kept only for the
columns reads filter on (every snapshot load parses the statistics of every file), a chunk
with nothing to quarantine and no excursion makes no commit to those tables (no snapshot
load, no log entry), and ``silver/telemetry_log`` carries no per-file markers (its rows are
the record). The exactly-once guarantees these rely on are tested in test_reliability.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from pharma_assets.lake import bronze, silver
from pharma_assets.lake.landing_scan import files_for_batch
from pharma_assets.lake.specs import load_spec
from pharma_assets.lake.storage import STATS_COLUMNS, Lake

from .conftest import ingest_all


def _stats_columns(lake: Lake, layer: str, name: str) -> set[str]:
    dt = lake.table(layer, name)
    assert dt is not None
    cols = pl.DataFrame(dt.get_add_actions(flatten=True)).columns
    return {c.removeprefix("min.") for c in cols if c.startswith("min.")}


def test_file_statistics_only_for_filter_columns(lake: Lake, landing: Path) -> None:
    ingest_all(lake, landing)
    for layer, name in [
        ("bronze", "telemetry"),
        ("silver", "telemetry"),
        ("silver", "batch_timeline"),
        ("bronze", "ingest_log"),
    ]:
        got = _stats_columns(lake, layer, name)
        assert got <= set(STATS_COLUMNS), (layer, name, got - set(STATS_COLUMNS))
    # the columns reads prune on keep theirs (ts within a batch, source_file in bronze)
    assert {"ts", "source_file"} <= _stats_columns(lake, "silver", "telemetry")
    assert {"ts", "source_file"} <= _stats_columns(lake, "bronze", "telemetry")
    # row counts stay in the log (materialization metadata reads them)
    dt = lake.table("silver", "telemetry")
    assert dt is not None
    actions = pl.DataFrame(dt.get_add_actions(flatten=True))
    assert int(actions["num_records"].sum()) == lake.read("silver", "telemetry").height


def _clean_chunk(src: Path, dst: Path) -> int:
    """A copy of ``src`` with only readings that pass every check and are no CPP."""
    spec = load_spec()
    df = pl.read_parquet(src)
    keep = pl.lit(False)
    for tag, t in spec.tags.items():
        if tag in spec.cpp_tags:
            continue
        keep = keep | (
            (pl.col("tag") == tag)
            & (pl.col("uom") == t.uom)
            & pl.col("value").is_between(t.physical[0], t.physical[1])
        )
    clean = df.filter(keep & pl.col("value").is_finite() & (pl.col("quality") != "bad"))
    clean = clean.unique(["tag", "ts"], keep="first", maintain_order=True)
    clean.write_parquet(dst)
    return clean.height


def test_a_clean_chunk_commits_nothing_to_quarantine_or_segments(
    lake: Lake, landing: Path, tmp_path: Path
) -> None:
    bid = sorted(p.name for p in (landing / "telemetry").glob("*/*"))[0]
    chunks = sorted((landing / "telemetry").glob(f"*/{bid}/*.parquet"))
    held = tmp_path / chunks[-1].name
    shutil.move(chunks[-1], held)
    ingest_all(lake, landing)
    versions = {n: lake.version("silver", n) for n in silver.TELEMETRY_TABLES}
    assert versions["telemetry_quarantine"] is not None  # created by the first ingestion
    assert versions["excursion_segments"] is not None

    rows = _clean_chunk(held, chunks[-1])
    assert rows > 0
    fresh = Lake.at(lake.root)  # a new run: nothing cached
    rep = bronze.ingest_files(
        fresh, landing, "telemetry", files_for_batch(landing, "telemetry", bid), "late"
    )
    assert rep.files_accepted == 1 and rep.rows_accepted == rows
    srep = silver.process_telemetry(fresh, [bid], load_spec(), "late")
    assert srep.files_processed == 1 and srep.rows_valid == rows
    assert srep.rows_quarantined == 0 and srep.segments == 0
    after = {n: fresh.version("silver", n) for n in silver.TELEMETRY_TABLES}
    # nothing to write: no commit (so no snapshot of these growing tables was needed)
    assert after["telemetry_quarantine"] == versions["telemetry_quarantine"]
    assert after["excursion_segments"] == versions["excursion_segments"]
    for name in ("telemetry", "telemetry_stats", "batch_timeline"):
        assert after[name] == versions[name] + 1, name  # type: ignore[operator]
    rel = chunks[-1].relative_to(landing).as_posix()
    assert fresh.sources_in("silver", "telemetry", [rel], [bid]) == {rel}
    # the file is done: a rerun does nothing, and its rows are in silver once
    again = silver.process_telemetry(Lake.at(lake.root), [bid], load_spec(), "again")
    assert again.files_processed == 0
    got = fresh.read(
        "silver", "telemetry", ["source_file"], filter_expr=pl.col("source_file") == rel
    )
    assert got is not None and got.height == rows
    rec = silver.reconcile_telemetry(fresh, str(landing), [bid])
    assert rec["reconciled"] and rec["pending_rows"] == 0, rec


def test_ingestion_tables_carry_no_markers_their_rows_are_the_record(
    lake: Lake, landing: Path
) -> None:
    """No per-file transaction markers accumulate in the append-only tables' logs (they made
    every snapshot load grow with the lake): whether a file is written is read from rows."""
    ingest_all(lake, landing)
    log = lake.read("silver", "telemetry_log")
    assert log is not None and log.height > 0
    files = log["source_file"].to_list()
    ids = log["batch_id"].unique().to_list()
    for layer, name in [
        ("bronze", "telemetry"),
        ("bronze", "ingest_log"),
        *[("silver", n) for n in (*silver.TELEMETRY_TABLES, "telemetry_log")],
    ]:
        assert lake.written_sources(layer, name, files) == set(), f"{layer}/{name} has markers"
    # every processed file has rows in silver/telemetry and in the per-file statistics
    assert lake.sources_in("silver", "telemetry", files, ids) == set(files)
    assert lake.sources_in("silver", "telemetry_stats", files) == set(files)
    # a file that is not there is not reported, with or without the batch filter
    assert lake.sources_in("silver", "telemetry", ["telemetry/nope.parquet"], ids) == set()
    assert lake.sources_in("bronze", "telemetry", [files[0], "x"]) == {files[0]}


def test_empty_outputs_still_create_their_tables(lake: Lake, landing: Path) -> None:
    """Readers (gold, dashboards) expect every silver table once telemetry was processed."""
    bid = sorted(p.name for p in (landing / "telemetry").glob("*/*"))[0]
    chunks = sorted((landing / "telemetry").glob(f"*/{bid}/*.parquet"))
    src = chunks[0].with_name("original.bin")
    chunks[0].rename(src)
    rows = _clean_chunk(src, chunks[0])
    src.unlink()
    for c in chunks[1:]:
        c.unlink()
    for source in ("mes", "telemetry"):
        bronze.ingest_files(lake, landing, source, files_for_batch(landing, source, bid), "r")
    silver.build_batches(lake)
    rep = silver.process_telemetry(lake, [bid], load_spec(), "r")
    assert rep.files_processed == 1 and rep.rows_valid == rows and rep.rows_quarantined == 0
    for name in silver.TELEMETRY_TABLES:
        df = lake.read("silver", name)
        assert df is not None, f"silver/{name} was not created"
    assert lake.read("silver", "telemetry_quarantine").height == 0  # type: ignore[union-attr]
    assert lake.read("silver", "excursion_segments").height == 0  # type: ignore[union-attr]


def test_tables_partitioned_by_an_older_version_still_append_and_answer(tmp_path: Path) -> None:
    """Lakes written before 2026-11-28 have batch_id-partitioned telemetry tables; the
    unpartitioned appends of today's code go into them and "already written" still works."""
    lake = Lake.at(tmp_path / "old")
    first = pl.DataFrame({"batch_id": ["A", "B"], "source_file": ["f1", "f2"], "v": [1.0, 2.0]})
    lake.append("silver", "t", first, partition_by=["batch_id"])
    lake.append(
        "silver",
        "t",
        pl.DataFrame({"batch_id": ["A", "C"], "source_file": ["f3", "f4"], "v": [3.0, 4.0]}),
    )
    dt = lake.table("silver", "t")
    assert dt is not None and dt.metadata().partition_columns == ["batch_id"]
    got = lake.read("silver", "t")
    assert got is not None and sorted(got["source_file"].to_list()) == ["f1", "f2", "f3", "f4"]
    assert lake.sources_in("silver", "t", ["f1", "f3", "nope"], ["A"]) == {"f1", "f3"}
