"""The `pharma-twin` command line: simulate, live, import (and, later, pipeline)."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .twin.config import ConfigError, load_plant, load_recipes

if TYPE_CHECKING:
    from .defs.lakehouse.resources import LakehouseResource

app = typer.Typer(
    help="pharma-twin: a digital twin of a biopharmaceutical plant.", no_args_is_help=True
)
console = Console(stderr=True)


def _period_seconds(text: str) -> float:
    t = text.strip().lower()
    try:
        if t.endswith("ms"):
            return float(t[:-2]) / 1000
        if t.endswith("s"):
            return float(t[:-1])
        if t.endswith("min"):
            return float(t[:-3]) * 60
        if t.endswith("m"):
            return float(t[:-1]) * 60
        return float(t)
    except ValueError:
        raise typer.BadParameter(f"period {text!r} is not a duration like 60s, 1m or 5s") from None


def _parse_start(text: str | None) -> datetime | None:
    if text is None or text == "auto":
        return None
    try:
        d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"start {text!r} is not an ISO date/time such as 2026-01-05T00:00Z"
        ) from None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


PlantOpt = Annotated[
    Path | None, typer.Option(help="Plant YAML (default: the built-in 6-unit demo plant).")
]
RecipeOpt = Annotated[
    Path | None, typer.Option(help="Recipe book YAML (default: built-in recipes).")
]


@app.command()
def simulate(
    units: Annotated[int, typer.Option(help="Number of bioreactors.")] = 6,
    batches: Annotated[int, typer.Option(help="Number of batches in the history.")] = 100,
    seed: Annotated[
        int, typer.Option(help="Seed: the same seed and options give identical files.")
    ] = 42,
    out: Annotated[Path, typer.Option(help="Landing-zone folder to write.")] = Path("landing"),
    truth: Annotated[
        Path | None, typer.Option(help="Ground-truth folder (default: <out>/../ground_truth).")
    ] = None,
    period: Annotated[
        str, typer.Option(help="Simulator step and default sampling period, e.g. 60s or 10s.")
    ] = "60s",
    start: Annotated[
        str | None, typer.Option(help="First inoculation (ISO, UTC). Default: end before today.")
    ] = None,
    plant: PlantOpt = None,
    recipes: RecipeOpt = None,
) -> None:
    """Simulate a plant history into the landing zone, with a progress bar."""
    from .twin.history import simulate_history

    try:
        plant_cfg = load_plant(plant).with_units(units)
        book = load_recipes(recipes)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console) as prog:  # fmt: skip
        task = prog.add_task("", total=batches)

        def tick(done: int, total: int, batch_id: str) -> None:
            prog.update(task, completed=done, description=batch_id)

        res = simulate_history(plant_cfg, book, batches, seed, out, truth, _period_seconds(period), _parse_start(start),
                               progress=tick)  # fmt: skip
    dt = time.perf_counter() - t0
    statuses = {s: sum(b.status == s for b in res.plan.batches) for s in ("complete", "aborted")}
    console.print(
        f"[green]wrote[/] {res.files_written:,} files, {res.readings_written:,} readings "
        f"({res.batch_minutes:,.0f} batch-minutes) in {dt:.1f} s\n"
        f"  batches: {statuses['complete']} complete, {statuses['aborted']} aborted; "
        f"{len(res.plan.labels)} labelled faults; {len(res.plan.maintenance)} maintenance records\n"
        f"  landing zone: {res.landing.resolve()}\n  ground truth: {res.ground_truth.resolve()}"
    )


def _live_start(text: str | None) -> datetime | None:
    if text == "yesterday":
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return today - timedelta(days=1)
    return _parse_start(text)


@app.command()
def live(
    out: Annotated[Path, typer.Option(help="Landing-zone folder to write.")] = Path("landing"),
    seed: Annotated[int, typer.Option()] = 7,
    speed: Annotated[
        float,
        typer.Option(
            help="Clock acceleration: 1 = real time, 60 = a process minute per second. The "
            "process clock never passes the wall clock: a clock started in the past runs this "
            "fast until it catches up, then at real time."
        ),
    ] = 60.0,
    period: Annotated[str, typer.Option(help="Sampling period (down to 1s).")] = "60s",
    chunk_minutes: Annotated[
        float, typer.Option(help="Process minutes per telemetry chunk.")
    ] = 10.0,
    hours: Annotated[
        float | None,
        typer.Option(help="Stop after this many process hours (default: run until Ctrl-C)."),
    ] = None,
    units: Annotated[int, typer.Option(help="Number of bioreactors.")] = 6,
    start: Annotated[
        str | None,
        typer.Option(
            help="Process clock at start (ISO, UTC; 'yesterday' = 00:00 UTC yesterday). Default: now."
        ),
    ] = None,
    plant: PlantOpt = None,
    recipes: RecipeOpt = None,
) -> None:
    """Run the plant live, writing telemetry chunks, MES events and LIMS results as they happen."""
    from .twin.live import run_live

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    plant_cfg = load_plant(plant).with_units(units)
    console.print(
        f"live plant: {units} units, speed x{speed:g}, writing to {out.resolve()} (Ctrl-C stops)"
    )
    stats = run_live(plant_cfg, load_recipes(recipes), out, seed=seed, speed=speed, period_s=_period_seconds(period),
                     chunk_minutes=chunk_minutes, hours=hours, start=_live_start(start))  # fmt: skip
    console.print(f"live mode stopped: {stats.chunks} chunks, {stats.batches_started} batches started, "
                  f"{stats.batches_finished} finished, {stats.process_hours:.1f} process hours")  # fmt: skip


@app.command("import")
def import_(
    input: Annotated[
        Path, typer.Option("--input", help="Historical batch dataset (CSV or Parquet).")
    ],
    layout: Annotated[
        str, typer.Option(help="wide (a column per tag) or long (tag and value columns).")
    ],
    tag_map: Annotated[
        Path, typer.Option("--tag-map", help="YAML mapping source tags/units to ours.")
    ],
    out: Annotated[Path, typer.Option(help="Landing-zone folder to write.")] = Path("landing"),
) -> None:
    """Turn a historical batch dataset into landing files; unmapped columns are reported."""
    from .importer import import_file

    if layout not in ("wide", "long"):
        raise typer.BadParameter(f"--layout must be wide or long, got {layout!r}")
    report = import_file(input, layout, tag_map, out)  # type: ignore[arg-type]
    console.print(report.summary())


def _lakehouse(lake: str | None, landing: Path | None) -> LakehouseResource:
    """The environment's lakehouse settings, with the command line's lake/landing on top."""
    from .defs.lakehouse.resources import LakehouseResource

    env = LakehouseResource.from_env()
    return LakehouseResource(
        lake_uri=lake or env.lake_uri,
        landing_dir=str(landing or env.landing_dir),
        spec_path=env.spec_path,
    )


@app.command()
def pipeline(
    landing: Annotated[
        Path | None, typer.Option(help="Landing zone (default: $PHARMA_LANDING_DIR or ./landing).")
    ] = None,
    lake: Annotated[
        str | None, typer.Option(help="Lake root URI (default: $PHARMA_LAKE_URI or ./lakehouse).")
    ] = None,
    batches_per_run: Annotated[int, typer.Option(help="Batch partitions per ingestion run.")] = 20,
    rebuild: Annotated[
        bool,
        typer.Option(
            help="Archive silver and gold (to <lake>/_archive/) and rebuild them from bronze, "
            "e.g. after a CPP spec change. Bronze is never rebuilt. Local lakes only."
        ),
    ] = False,
) -> None:
    """Materialize everything pending for the landing zone (bronze, silver, gold) and exit."""
    import warnings

    import dagster as dg

    # single-run backfill policies are "beta" in dagster 1.13; we depend on them knowingly
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    from .compliance.deviations import auto_open
    from .defs.compliance.materializations import audit_new_materializations
    from .pipeline import archive_derived, default_instance, run_pipeline

    res = _lakehouse(lake, landing)
    if rebuild:
        try:
            moved = archive_derived(res.lake())
        except ValueError as e:
            console.print(f"[red]{e}")
            raise typer.Exit(2) from None
        console.print(
            f"archived {', '.join(moved) or 'nothing'}; rebuilding silver and gold from bronze"
        )
    t0 = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("scanning landing zone", total=None)

        def progress(msg: str, done: int, total: int) -> None:
            bar.update(task, description=msg, completed=done, total=total or None)

        with default_instance() as instance:
            out = run_pipeline(res, instance, batches_per_run, progress)
            # the daemon's sensors do this under `dagster dev`; a one-shot run does it here
            bar.update(task, description="audit trail and deviations")
            n_audit = audit_new_materializations(res.lake(), instance)
            n_dev = len(auto_open(res.lake()))
    console.print(
        f"pipeline: {len(out.batches)} batch partitions with new files, {len(out.runs)} runs, "
        f"{len(out.failed)} failed, {time.perf_counter() - t0:.1f} s; lake at {res.lake_uri}\n"
        f"  {n_audit} materializations recorded in the audit trail, {n_dev} deviations opened"
    )
    if out.failed:
        console.print(f"[red]failed runs: {', '.join(out.failed)} (see the Dagster UI)")
        raise typer.Exit(1)


@app.command()
def compact(
    lake: Annotated[
        str | None, typer.Option(help="Lake root URI (default: $PHARMA_LAKE_URI or ./lakehouse).")
    ] = None,
    min_files: Annotated[int, typer.Option(help="Leave tables with fewer data files.")] = 16,
) -> None:
    """Compact the small files of the append-only lake tables (what the nightly
    lake_maintenance_job does); nothing is deleted."""
    from .lake import maintenance

    res = _lakehouse(lake, None)
    for r in maintenance.compact(res.lake(), min_files=min_files):
        what = r.skipped or f"{r.files_before} -> {r.files_after} files in {r.seconds:.1f} s"
        console.print(f"{r.table}: {what}")


@app.command()
def train(
    lake: Annotated[
        str | None, typer.Option(help="Lake root URI (default: $PHARMA_LAKE_URI or ./lakehouse).")
    ] = None,
    if_untrained: Annotated[
        bool, typer.Option(help="Do nothing when gold/model_performance already exists.")
    ] = False,
) -> None:
    """Train and score every model now (retrain_job), with the champion/challenger gate.

    Feature tables, predictive maintenance, batch quality, contamination, MSPC; MLflow runs
    and registered versions; the gold scoring tables. The retrain sensor then counts the
    next 50 completed batches from here."""
    import warnings

    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    from .pipeline import default_instance, run_training

    res = _lakehouse(lake, None)
    if if_untrained and res.lake().version("gold", "model_performance") is not None:
        console.print("models already trained (gold/model_performance exists); skipping")
        return
    t0 = time.perf_counter()
    with (
        console.status("training and scoring every model (retrain_job) ..."),
        default_instance() as instance,
    ):
        r, n = run_training(res, instance)
    if not r.success:
        for ev in r.get_step_failure_events():
            err = ev.step_failure_data.error
            while err is not None and err.cause is not None:  # the root cause, not the wrapper
                err = err.cause
            console.print(f"[red]{ev.step_key}: {err.message.strip() if err else 'failed'}")
        console.print(f"[red]retrain_job failed (run {r.run_id}); details in the Dagster UI")
        raise typer.Exit(1)
    perf = res.lake().read("gold", "model_performance")
    console.print(
        f"trained on {n} completed batches in {time.perf_counter() - t0:.0f} s (run {r.run_id})"
    )
    if perf is not None and "target_met" in perf.columns:
        import polars as pl

        latest = (
            perf.filter(pl.col("target").is_not_null())
            .sort("computed_at")
            .group_by(["model_name", "metric"], maintain_order=True)
            .last()
        )
        for row in latest.iter_rows(named=True):
            verdict = "met" if row["target_met"] else "NOT met"
            console.print(
                f"  {row['model_name']} v{row['model_version']}: {row['metric']} = "
                f"{row['value']:.3f} (target {row['target']}, {verdict})"
            )


# GxP commands (users, audit, deviation, spec, sign, release, ebr, backup)
from .compliance.cli import register as _register_compliance  # noqa: E402

_register_compliance(app)


if __name__ == "__main__":
    app()
