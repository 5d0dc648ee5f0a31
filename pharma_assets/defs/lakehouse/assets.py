"""Bronze, silver and gold assets: thin wrappers over pharma_assets.lake.

Batch-level assets share one dynamic partitions definition keyed by batch id and a
single-run backfill policy, so a backfill of 1,000 batches is one run that commits in
large groups instead of 1,000 runs.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from pharma_assets.compliance import release
from pharma_assets.lake import amendments, bronze, gold, silver
from pharma_assets.lake.landing_scan import files_for_batch, files_for_source
from pharma_assets.lake.storage import Lake
from pharma_assets.lake.telemetry_ingest import ingest_telemetry

from .resources import LakehouseResource
from .schemas import column_schema_metadata

batch_partitions = dg.DynamicPartitionsDefinition(name="batch")
SINGLE_RUN = dg.BackfillPolicy.single_run()
DELTA = {"delta", "polars"}


def _keys(context: dg.AssetExecutionContext) -> list[str]:
    keys = (
        list(context.partition_keys)
        if context.has_partition_key_range or context.has_partition_key
        else []
    )
    only = context.run.tags.get("pharma/batch_ids")  # landing_sensor: a sparse range's batches
    if not only:
        return keys
    listed = set(only.split(","))
    return [k for k in keys if k in listed]


def table_meta(lake: Lake, layer: str, name: str) -> dict[str, Any]:
    return {
        "table_uri": dg.MetadataValue.path(lake.uri(layer, name)),
        "delta_version": lake.version(layer, name),
    }


def _bronze_checks(source: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "files_reconcile",
            asset=["bronze", source],
            description="every landed file is in the ingest log, accepted or quarantined",
        ),
        dg.AssetCheckSpec(
            "no_held_amendments",
            asset=["bronze", source],
            description="no delivery changing accepted values waits for a signed decision (pharma-twin amendment list)",
        ),
    ]


def _bronze_check_results(lake: Lake, source: str, keys: list[str], landed: int) -> Iterator[Any]:
    logged = bronze.read_log(lake, keys, source).height
    yield dg.AssetCheckResult(
        asset_key=["bronze", source],
        check_name="files_reconcile",
        passed=logged == landed,
        metadata={"files_landed": landed, "files_in_ingest_log": logged},
    )
    held = amendments.held(lake)
    held = held.filter((held["source"] == source) & held["batch_id"].is_in(keys))
    yield dg.AssetCheckResult(
        asset_key=["bronze", source],
        check_name="no_held_amendments",
        passed=held.height == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"held": held.height, "amendment_ids": ", ".join(held["amendment_id"].to_list())},
    )


def _bronze_batch_asset(source: str, description: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=["bronze", source],
        group_name="bronze",
        partitions_def=batch_partitions,
        backfill_policy=SINGLE_RUN,
        deps=[dg.AssetKey(["landing", source])],
        kinds=DELTA,
        description=description,
        metadata={"partition_expr": "batch_id", "table": f"bronze/{source}"},
        check_specs=_bronze_checks(source),
    )
    def _asset(context: dg.AssetExecutionContext, lakehouse: LakehouseResource) -> Iterator[Any]:
        lake = lakehouse.lake()
        files = [
            f for bid in _keys(context) for f in files_for_batch(lakehouse.landing_dir, source, bid)
        ]
        rep = bronze.ingest_files(lake, lakehouse.landing_dir, source, files, context.run.run_id)
        yield dg.MaterializeResult(
            metadata={**rep.as_metadata(), **table_meta(lake, "bronze", source)}
        )
        yield from _bronze_check_results(lake, source, _keys(context), len(files))

    return _asset


bronze_mes = _bronze_batch_asset(
    "mes", "MES batch events as landed (typed keys plus the full JSON payload)."
)
bronze_lims = _bronze_batch_asset("lims", "LIMS results as landed (in-process and release).")


@dg.asset(
    key=["bronze", "cmms"],
    group_name="bronze",
    deps=[dg.AssetKey(["landing", "cmms"])],
    kinds=DELTA,
    description="CMMS maintenance events as landed. Also quarantines landed files outside the "
    "landing layout (reason unexpected_location), so no landed file is invisible.",
)
def bronze_cmms(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource
) -> dg.MaterializeResult:
    return ingest_plant_wide(context, lakehouse, "cmms", "unroutable")


def ingest_plant_wide(
    context: dg.AssetExecutionContext,
    lakehouse: LakehouseResource,
    source: str,
    *also: str,
) -> dg.MaterializeResult:
    """Ingest every landed file of a plant-wide (unpartitioned) source into bronze/<source>,
    plus the files of the ``also`` sources into their own bronze tables; metadata of all."""
    lake = lakehouse.lake()
    rep = bronze.ingest_files(
        lake,
        lakehouse.landing_dir,
        source,
        files_for_source(lakehouse.landing_dir, source),
        context.run.run_id,
    )
    for other in also:
        rep.merge(
            bronze.ingest_files(
                lake,
                lakehouse.landing_dir,
                other,
                files_for_source(lakehouse.landing_dir, other),
                context.run.run_id,
            )
        )
    return dg.MaterializeResult(
        metadata={**rep.as_metadata(), **table_meta(lake, "bronze", source)}
    )


@dg.asset(
    key=["silver", "batches"],
    group_name="silver",
    partitions_def=batch_partitions,
    backfill_policy=SINGLE_RUN,
    deps=[bronze_mes],
    kinds=DELTA,
    description="One row per batch from MES events: unit, recipe, material lots, start/end, "
    "status running|complete|aborted, current phase. Also writes silver/batch_phases and "
    "silver/event_quarantine (events that fail their contract, with the reason).",
    metadata={"partition_expr": "batch_id"},
)
def silver_batches(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource
) -> dg.MaterializeResult:
    lake = lakehouse.lake()
    res = silver.build_batches(lake, _keys(context), lakehouse.spec())
    return dg.MaterializeResult(metadata={**res, **table_meta(lake, "silver", "batches")})


@dg.asset(
    key=["silver", "lab_results"],
    group_name="silver",
    partitions_def=batch_partitions,
    backfill_policy=SINGLE_RUN,
    deps=[bronze_lims],
    kinds=DELTA,
    description="LIMS results validated against the spec file (known analyte, unit, physical "
    "limits); release CQAs carry their spec limits and within_spec. Failures go to "
    "silver/lab_quarantine with the failed check and the offending value.",
    metadata={"partition_expr": "batch_id"},
)
def silver_lab_results(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource
) -> dg.MaterializeResult:
    lake = lakehouse.lake()
    res = silver.build_lab_results(lake, lakehouse.spec(), _keys(context))
    return dg.MaterializeResult(metadata={**res, **table_meta(lake, "silver", "lab_results")})


@dg.asset(
    key=["silver", "maintenance_events"],
    group_name="silver",
    deps=[bronze_cmms],
    kinds=DELTA,
    description="CMMS work orders, typed and de-duplicated by work order id.",
)
def silver_maintenance(lakehouse: LakehouseResource) -> dg.MaterializeResult:
    lake = lakehouse.lake()
    return dg.MaterializeResult(metadata=silver.build_maintenance(lake))


_SILVER_TELEMETRY = {
    "telemetry": "Valid readings: typed, unit-normalised (canonical unit per tag), with phase and spec version.",
    "telemetry_quarantine": "Readings that failed the pandera contract, with failed_check, all failed checks and the offending value.",
    "excursion_segments": "Runs of valid CPP readings outside the normal operating range, per delivered file.",
    "telemetry_stats": "Per file, tag and phase: n, sum, sum of squares, min, max, first/last reading.",
    "batch_timeline": "One row per batch per elapsed minute, a column per tag, with phase.",
}


BRONZE_TELEMETRY = dg.AssetKey(["bronze", "telemetry"])


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            BRONZE_TELEMETRY,
            group_name="bronze",
            kinds=DELTA,
            deps=[dg.AssetKey(["landing", "telemetry"])],
            metadata={"partition_expr": "batch_id", "table": "bronze/telemetry"},
            description="Historian telemetry, one row per reading as landed, plus source_file, "
            "ingested_at, ingest_run_id and row_hash. Append-only; each landed file exactly once. "
            "Unreadable files go to bronze/quarantine; every file gets a row in bronze/ingest_log. "
            "Written in the same step as silver telemetry (one pass over each landed file).",
        ),
        *[
            dg.AssetSpec(
                ["silver", name],
                group_name="silver",
                description=desc,
                kinds=DELTA,
                deps=[BRONZE_TELEMETRY, silver_batches],
                metadata={"partition_expr": "batch_id"},
                skippable=name != "telemetry",
            )
            for name, desc in _SILVER_TELEMETRY.items()
        ],
    ],
    partitions_def=batch_partitions,
    backfill_policy=SINGLE_RUN,
    name="telemetry_ingest",
    check_specs=[
        *_bronze_checks("telemetry"),
        dg.AssetCheckSpec(
            "contract_pass_rate",
            asset=["silver", "telemetry"],
            description="share of the partition's readings that pass the contract (>= 99 %)",
        ),
        dg.AssetCheckSpec(
            "reconciliation",
            asset=["silver", "telemetry"],
            description="rows landed = bronze rows = silver rows + quarantined rows (+ rows waiting for their batch_start)",
        ),
        dg.AssetCheckSpec(
            "no_duplicate_readings",
            asset=["silver", "telemetry"],
            description="no two silver readings share (unit, tag, ts)",
        ),
        dg.AssetCheckSpec(
            "batch_start_landed",
            asset=["silver", "telemetry"],
            description="no telemetry of the partition(s) waits for its batch_start MES event",
        ),
    ],
)
def telemetry_ingest(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource
) -> Iterator[Any]:
    """Landed telemetry of the partition(s) -> bronze/telemetry and the five silver telemetry
    tables in one pass: each landed file is read once, written to bronze, validated and
    written to silver from the same rows (pharma_assets.lake.telemetry_ingest)."""
    lake = lakehouse.lake()
    keys = _keys(context)
    spec = lakehouse.spec()
    files = [f for bid in keys for f in files_for_batch(lakehouse.landing_dir, "telemetry", bid)]
    both = ingest_telemetry(lake, lakehouse.landing_dir, files, spec, context.run.run_id)
    rep = both.silver
    yield dg.MaterializeResult(
        asset_key=BRONZE_TELEMETRY,
        metadata={
            **both.bronze.as_metadata(),
            "files_handed_to_silver": both.handed_over_files,
            **table_meta(lake, "bronze", "telemetry"),
        },
    )
    yield from _bronze_check_results(lake, "telemetry", keys, len(files))
    for name in _SILVER_TELEMETRY:
        yield dg.MaterializeResult(
            asset_key=["silver", name],
            metadata={
                **(rep.as_metadata() if name == "telemetry" else {}),
                **table_meta(lake, "silver", name),
                **column_schema_metadata(name, spec),
            },
        )
    # the checks look at the files this run processed (a chunk's run must not re-read the
    # batch's history); partition-wide totals come from the ledger
    rec = silver.reconcile_telemetry(lake, lakehouse.landing_dir, keys, rep.files)
    rate_keys = (
        "silver_pass_rate",
        "silver_rows",
        "quarantined_rows",
        "partition_pass_rate",
        "partition_rows_valid",
        "partition_rows_quarantined",
    )
    yield dg.AssetCheckResult(
        check_name="contract_pass_rate",
        asset_key=["silver", "telemetry"],
        passed=rec.get("partition_pass_rate", rec["silver_pass_rate"]) >= 0.99,
        metadata={k: rec[k] for k in rate_keys if k in rec},
    )
    yield dg.AssetCheckResult(
        check_name="reconciliation",
        asset_key=["silver", "telemetry"],
        passed=rec["reconciled"],
        metadata=rec,
    )
    dups = silver.duplicate_readings(lake, keys, rep.files)
    yield dg.AssetCheckResult(
        check_name="no_duplicate_readings",
        asset_key=["silver", "telemetry"],
        passed=dups == 0,
        metadata={
            "duplicate_keys": dups,
            "partitions": len(keys),
            "files_checked": len(rep.files),
            "scope": "time window of the files this run processed",
        },
    )
    from pharma_assets.lake.alarms import waiting_for_batch_start

    waiting = waiting_for_batch_start(lake, keys)
    yield dg.AssetCheckResult(
        check_name="batch_start_landed",
        asset_key=["silver", "telemetry"],
        passed=not waiting,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "files_waiting": sum(waiting.values()),
            "batches_waiting": ", ".join(sorted(waiting)),
        },
    )


#: QA's signed release decisions, written by the compliance package (not by Dagster); the
#: asset is declared in defs/compliance, gold reads it
GXP_BATCH_RELEASE = dg.AssetKey(["gxp", "batch_release"])

_GOLD = {
    "batch_summary": "One row per batch: unit, recipe, times, duration, peak VCD, final titer, harvest volume, product mass, every release CQA, excursion count and minutes per CPP, Cpk per CPP, right-first-time, status.",
    "cpp_excursions": "CPP excursions: start, end, duration, peak, minutes outside PAR, severity (minor/major/critical), active flag.",
    "unit_status": "Latest state of every unit: current batch, phase, day, last reading of each CPP, active excursions.",
    "plant_kpis": "Per ISO week: batches started/completed/aborted/running, right-first-time %, mean titer and product mass.",
}


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            ["gold", name],
            group_name="gold",
            description=desc,
            kinds=DELTA,
            deps=[
                dg.AssetKey(["silver", "telemetry"]),
                dg.AssetKey(["silver", "excursion_segments"]),
                dg.AssetKey(["silver", "telemetry_stats"]),
                silver_batches,
                silver_lab_results,
                GXP_BATCH_RELEASE,
            ],
        )
        for name, desc in _GOLD.items()
    ],
    name="gold_tables",
    check_specs=[
        dg.AssetCheckSpec(
            "one_row_per_batch",
            asset=["gold", "batch_summary"],
            description="exactly one row per batch known to silver, and every completed batch present",
        ),
        dg.AssetCheckSpec(
            "running_batches_fresh",
            asset=["gold", "unit_status"],
            description="every running batch has telemetry newer than 2 hours",
        ),
    ],
)
def gold_tables(lakehouse: LakehouseResource) -> Iterator[Any]:
    """Rebuild the gold tables from silver aggregates (never from raw telemetry), with QA's
    signed release decisions (gxp/batch_release) on gold/batch_summary."""
    lake = lakehouse.lake()
    res = gold.build_gold(
        lake, lakehouse.spec(), release_decisions=release.release_status_frame(lake)
    )
    for name in _GOLD:
        yield dg.MaterializeResult(
            asset_key=["gold", name],
            metadata={
                **(res if name == "batch_summary" else {}),
                **table_meta(lake, "gold", name),
            },
        )
    chk = gold.check_one_row_per_batch(lake)
    yield dg.AssetCheckResult(
        check_name="one_row_per_batch",
        asset_key=["gold", "batch_summary"],
        passed=bool(chk["passed"]),
        metadata=chk,
    )
    fr = gold.check_freshness(lake, max_age_h=2.0)
    yield dg.AssetCheckResult(
        check_name="running_batches_fresh",
        asset_key=["gold", "unit_status"],
        passed=bool(fr["passed"]),
        severity=dg.AssetCheckSeverity.WARN,
        metadata=fr,
    )
