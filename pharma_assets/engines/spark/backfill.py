"""The bulk/backfill path (landing -> bronze -> silver) on a Spark cluster.

The unit of work is a group of batches. Spark schedules the groups on its executors; each
task runs the lake's own ingestion for its batches (``bronze.ingest_files`` for the
batch's MES, LIMS and telemetry files, then ``silver.process_telemetry``), so the tables,
the contracts, the quarantine reasons and the exactly-once commit rules (rows carry their
``source_file``; one commit per file group; per-source and per-batch locks; ledgers last)
are the same code as the polars engine's: parity by construction, checked by
``pharma_assets_tests/engines/test_spark_parity.py``. The driver does the small,
plant-wide steps (CMMS, CoA, files outside the layout, batches and lab results from MES/LIMS)
between the two stages.

Executors need the lake and the landing zone at the same paths as the driver (a local
cluster, a shared mount, or an object-store lake with its credentials in the executors'
environment).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

BATCH_SOURCES = ("mes", "lims", "telemetry")


@dataclass
class BackfillReport:
    """What the tasks did, summed (the same counters as ``IngestReport``/``SilverReport``)."""

    batches: list[str] = field(default_factory=list)
    tasks: int = 0
    bronze: dict[str, dict[str, Any]] = field(default_factory=dict)
    silver: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # telemetry files silver processed

    def as_metadata(self) -> dict[str, Any]:
        return {
            "engine": "spark",
            "batches": len(self.batches),
            "spark_tasks": self.tasks,
            **{
                f"bronze_{s}_{k}": v
                for s, m in self.bronze.items()
                for k, v in m.items()
                if isinstance(v, int)
            },
            **{f"silver_{k}": v for k, v in self.silver.items() if isinstance(v, int | float)},
        }


def groups_of(batch_ids: Sequence[str], per_task: int) -> list[list[str]]:
    """Batches in partition order, ``per_task`` at a time (one Spark task each)."""
    if per_task < 1:
        raise ValueError(f"batches per task must be at least 1, got {per_task}")
    ids = sorted(set(batch_ids))
    return [ids[i : i + per_task] for i in range(0, len(ids), per_task)]


def _bronze_task(ctx: Mapping[str, Any], groups: Iterable[list[str]]) -> Iterator[dict[str, Any]]:
    from pharma_assets.lake import bronze
    from pharma_assets.lake.landing_scan import files_for_batch
    from pharma_assets.lake.storage import Lake

    lake = Lake.at(ctx["lake_uri"], ctx["storage_options"])
    for ids in groups:
        for source in BATCH_SOURCES:
            files = [f for b in ids for f in files_for_batch(ctx["landing_dir"], source, b)]
            rep = bronze.ingest_files(lake, ctx["landing_dir"], source, files, ctx["run_id"])
            yield {
                "stage": "bronze",
                "source": source,
                **rep.as_metadata(),
                "batches": sorted(rep.batches),
            }


def _silver_task(ctx: Mapping[str, Any], groups: Iterable[list[str]]) -> Iterator[dict[str, Any]]:
    from pharma_assets.lake import silver
    from pharma_assets.lake.specs import load_spec
    from pharma_assets.lake.storage import Lake

    lake = Lake.at(ctx["lake_uri"], ctx["storage_options"])
    spec = load_spec(ctx["spec_path"], landing=ctx["landing_dir"])
    for ids in groups:
        rep = silver.process_telemetry(lake, ids, spec, ctx["run_id"])
        yield {"stage": "silver", **rep.as_metadata(), "files": rep.files}


def backfill(
    spark: SparkSession,
    lake_uri: str,
    landing_dir: str,
    batch_ids: Sequence[str],
    run_id: str,
    spec_path: str | None = None,
    storage_options: Mapping[str, str] | None = None,
    batches_per_task: int = 4,
) -> BackfillReport:
    """Ingest ``batch_ids`` (their landed files not yet in the lake) through silver."""
    from pharma_assets.lake import bronze, silver
    from pharma_assets.lake.landing_scan import UNIT_SOURCES, files_for_source
    from pharma_assets.lake.specs import load_spec
    from pharma_assets.lake.storage import Lake

    lake = Lake.at(lake_uri, storage_options)
    ctx = {
        "lake_uri": lake.root,
        "landing_dir": str(landing_dir),
        "run_id": run_id,
        "spec_path": spec_path,
        "storage_options": dict(lake.storage_options),
    }
    groups = groups_of(batch_ids, batches_per_task)
    out = BackfillReport(batches=[b for g in groups for b in g], tasks=len(groups))
    if not groups:
        return out
    sc = spark.sparkContext
    sc.setJobDescription(f"pharma-twin bronze: {len(out.batches)} batches")
    rows = (
        sc.parallelize(groups, len(groups))
        .mapPartitions(lambda it: _bronze_task(ctx, it))
        .collect()
    )
    # plant-wide sources (cmms, coa: every UNIT_SOURCES, as the polars engine) and the
    # MES/LIMS-derived silver tables: small, on the driver
    for source in (*UNIT_SOURCES, "unroutable"):
        rep = bronze.ingest_files(
            lake, landing_dir, source, files_for_source(landing_dir, source), run_id
        )
        rows.append({"stage": "bronze", "source": source, **rep.as_metadata()})
    spec = load_spec(spec_path, landing=landing_dir)
    silver.build_batches(lake, out.batches, spec)
    silver.build_lab_results(lake, spec, out.batches)
    silver.build_maintenance(lake)
    sc.setJobDescription(f"pharma-twin silver: {len(out.batches)} batches")
    rows += (
        sc.parallelize(groups, len(groups))
        .mapPartitions(lambda it: _silver_task(ctx, it))
        .collect()
    )
    for r in rows:
        if r["stage"] == "bronze":
            acc = out.bronze.setdefault(r["source"], {})
            _add(acc, r)
        else:
            out.files += r.pop("files")
            _add(out.silver, r)
    return out


def _add(acc: dict[str, Any], row: Mapping[str, Any]) -> None:
    for k, v in row.items():
        if k in ("stage", "source", "batches", "contract_pass_rate"):
            continue
        if isinstance(v, dict):
            c: Counter[str] = Counter(acc.get(k, {}))
            c.update(v)
            acc[k] = dict(c)
        elif isinstance(v, int | float):
            acc[k] = acc.get(k, 0) + v
    if acc.get("rows_in"):
        acc["contract_pass_rate"] = round(acc.get("rows_valid", 0) / acc["rows_in"], 6)
