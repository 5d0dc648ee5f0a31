"""The `pharma-twin` command line: simulate, live, import, pipeline, train and the GxP
commands.

Errors: an expected failure (missing file or lake, bad argument, missing table) is one
line on stderr naming the offending value, and a non-zero exit; the traceback only with
``--debug`` (or ``PHARMA_DEBUG=1``). Paths: a command that reads a lake or a landing zone
refuses one that does not exist; only commands that legitimately create one do (simulate,
live and import create the landing zone they write; pipeline creates the lake).
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .cli_support import CliError, check_lake, existing_dir, existing_file
from .twin.config import ConfigError, load_plant, load_recipes

if TYPE_CHECKING:
    from .defs.lakehouse.resources import LakehouseResource
    from .ml.registry import ModelSummary

DEBUG_ENV = "PHARMA_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, CliError) else f"{type(e).__name__}: {text}"


class _Group(typer.core.TyperGroup):
    """Every command's exceptions end here: one line on stderr and exit 1 (``CliError``:
    its own code), unless --debug / PHARMA_DEBUG=1 asks for the traceback."""

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # exits, usage errors
            raise
        except Exception as e:
            if debug_enabled() or ctx.meta.get("pharma_debug"):
                raise
            hint = "" if isinstance(e, CliError) else " (--debug shows the traceback)"
            typer.echo(f"error: {_one_line(e)}{hint}", err=True)
            raise typer.Exit(e.code if isinstance(e, CliError) else 1) from None


app = typer.Typer(
    help="pharma-twin: a digital twin of a biopharmaceutical plant.",
    no_args_is_help=True,
    cls=_Group,
)
console = Console(stderr=True)


@app.callback()
def _main(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option("--debug", help=f"Show the traceback of a failure (or {DEBUG_ENV}=1)."),
    ] = False,
) -> None:
    """pharma-twin: a digital twin of a biopharmaceutical plant."""
    ctx.meta["pharma_debug"] = debug  # read by _Group.invoke; the environment is left alone


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
        raise CliError(f"period {text!r} is not a duration like 60s, 1m or 5s") from None


def _parse_start(text: str | None) -> datetime | None:
    if text is None or text == "auto":
        return None
    try:
        d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
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
        raise CliError(str(e)) from None
    period_s, start_ts = _period_seconds(period), _parse_start(start)  # checked before any work
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    ) as prog:
        task = prog.add_task("", total=batches)

        def tick(done: int, total: int, batch_id: str) -> None:
            prog.update(task, completed=done, description=batch_id)

        res = simulate_history(
            plant_cfg, book, batches, seed, out, truth, period_s, start_ts, progress=tick
        )
    dt = time.perf_counter() - t0
    statuses = {s: sum(b.status == s for b in res.plan.batches) for s in ("complete", "aborted")}
    console.print(
        f"[green]wrote[/] {res.files_written:,} files, {res.readings_written:,} readings "
        f"({res.batch_minutes:,.0f} batch-minutes) in {dt:.1f} s\n"
        f"  batches: {statuses['complete']} complete, {statuses['aborted']} aborted; "
        f"{len(res.plan.labels)} labelled faults; {len(res.plan.maintenance)} maintenance records\n"
        f"  landing zone: {res.landing.resolve()}\n  ground truth: {res.ground_truth.resolve()}"
    )
    now = datetime.now(UTC)
    ahead = [b for b in res.plan.batches if b.end > now]
    if ahead:  # silver quarantines readings dated after the wall clock (issue 15)
        latest = max(b.end for b in ahead)
        console.print(
            f"[yellow]warning:[/] {len(ahead)} of {len(res.plan.batches)} batches run past now "
            f"(the last ends {latest:%Y-%m-%d %H:%M} UTC): silver quarantines telemetry dated "
            "in the future while their MES and LIMS records reach gold; start the history "
            "earlier (--start) or leave --start out to end it before today"
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
    serve: Annotated[
        str | None,
        typer.Option(
            help="Serve telemetry over opcua, mqtt and/or modbus instead of files; a unit with "
            "a protocol in the plant YAML goes over that one only (docs/gateway.md)."
        ),
    ] = None,
    opcua_shard_size: Annotated[
        int | None,
        typer.Option(
            help="With --serve: one OPC UA server per this many units, on consecutive ports."
        ),
    ] = None,
) -> None:
    """Run the plant live, writing telemetry chunks, MES events and LIMS results as they happen."""
    if serve:
        from .gateway.cli import serve_from_live

        serve_from_live(
            serve,
            plant,
            recipes,
            units,
            out,
            seed,
            speed,
            _period_seconds(period),
            opcua_shard_size,
        )
        return
    from .twin.live import run_live

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    plant_cfg = load_plant(plant).with_units(units)
    console.print(
        f"live plant: {units} units, speed x{speed:g}, writing to {out.resolve()} (Ctrl-C stops)"
    )
    stats = run_live(
        plant_cfg,
        load_recipes(recipes),
        out,
        seed=seed,
        speed=speed,
        period_s=_period_seconds(period),
        chunk_minutes=chunk_minutes,
        hours=hours,
        start=_live_start(start),
    )
    console.print(
        f"live mode stopped: {stats.chunks} chunks, {stats.batches_started} batches started, "
        f"{stats.batches_finished} finished, {stats.process_hours:.1f} process hours"
    )


IMPORT_SOURCES = ("telemetry", "mes", "lims", "cmms", "infer-batches")


@app.command("import")
def import_(
    input: Annotated[
        Path | None,
        typer.Option("--input", help="The export to import (CSV, TSV or Parquet)."),
    ] = None,
    source: Annotated[
        str,
        typer.Option(
            help="What the file is: telemetry (historian), mes (batch list), lims (lab "
            "results), cmms (work orders), or infer-batches (no file: batch start and end "
            "from the telemetry already in --out)."
        ),
    ] = "telemetry",
    layout: Annotated[
        str | None,
        typer.Option(help="telemetry/lims: wide (a column per tag/analyte) or long."),
    ] = None,
    tag_map: Annotated[
        Path | None,
        typer.Option("--tag-map", "--map", help="Mapping YAML (tag map, MES/LIMS/CMMS map)."),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Landing-zone folder to write (created if absent).")
    ] = Path("landing"),
    allow_missing_tags: Annotated[
        bool,
        typer.Option(
            help="Import even if some tags of the tag map are absent from the file "
            "(default: refuse, a misspelled column would silently leave its tag out)."
        ),
    ] = False,
    infer_batches: Annotated[
        bool,
        typer.Option(
            help="telemetry: also write batch start/end events from the first and last "
            "reading of each imported batch that has no MES events (a site without MES)."
        ),
    ] = False,
) -> None:
    """Turn a plant export into landing files (historian, MES, LIMS, CMMS); what is not
    imported is reported, and what the landing zone still lacks is said at the end."""
    from .importer import import_file
    from .source_import import (
        import_cmms,
        import_lims,
        import_mes,
        infer_batch_events,
        landing_gaps,
    )

    if source not in IMPORT_SOURCES:
        raise CliError(f"--source must be one of {', '.join(IMPORT_SOURCES)}, got {source!r}")
    if layout is not None and layout not in ("wide", "long"):
        raise CliError(f"--layout must be wide or long, got {layout!r}")
    if source != "infer-batches":
        if input is None:
            raise CliError(f"--source {source} needs --input FILE")
        if tag_map is None:
            raise CliError(
                f"--source {source} needs --map MAPPING.yaml (docs/bring_your_own_data.md)"
            )
        existing_file(input, "input file")
        existing_file(tag_map, "mapping file")
    warnings: list[str] = []
    try:
        if source == "telemetry":
            assert input is not None and tag_map is not None
            if layout is None:
                raise CliError("--source telemetry needs --layout wide or long")
            shape: Literal["wide", "long"] = "wide" if layout == "wide" else "long"
            report = import_file(input, shape, tag_map, out, allow_missing_tags=allow_missing_tags)
            console.print(report.summary(), highlight=False)
            warnings += report.warnings()
            if infer_batches:
                inf = infer_batch_events(out, report.batches)
                console.print(inf.summary(), highlight=False)
                warnings += inf.warnings()
        elif source == "infer-batches":
            existing_dir(out, "landing zone")
            inf = infer_batch_events(out)
            console.print(inf.summary(), highlight=False)
            warnings += inf.warnings()
        else:
            assert input is not None and tag_map is not None
            if source == "mes":
                rep = import_mes(input, tag_map, out)
            elif source == "lims":
                lay: Literal["wide", "long"] | None = (
                    None if layout is None else ("wide" if layout == "wide" else "long")
                )
                rep = import_lims(input, tag_map, out, layout=lay)
            else:
                rep = import_cmms(input, tag_map, out)
            console.print(rep.summary(), highlight=False)
            warnings += rep.warnings()
    except ConfigError as e:
        raise CliError(str(e)) from None
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)
    gaps = landing_gaps(out).lines()
    if gaps:
        typer.echo("what the landing zone still lacks:", err=True)
        for g in gaps:
            typer.echo(f"  - {g}", err=True)


def _lakehouse(lake: str | None, landing: Path | None) -> LakehouseResource:
    """The environment's lakehouse settings, with the command line's lake/landing on top."""
    from .defs.lakehouse.resources import LakehouseResource

    env = LakehouseResource.from_env()
    return LakehouseResource(
        lake_uri=lake or env.lake_uri,
        landing_dir=str(landing or env.landing_dir),
        spec_path=env.spec_path,
        engine=env.engine,
        spark_master=env.spark_master,
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
    latest: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Only the LATEST most recent batches of each unit (a first slice: `make demo` "
            "shows the dashboards after it and fills in the rest in the background).",
        ),
    ] = None,
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
    from .pipeline import archive_derived, default_instance, run_pipeline, stop_on_sigterm

    res = _lakehouse(lake, landing)
    existing_dir(res.landing_dir, "landing zone")  # the lake may be new; the landing zone not
    if rebuild:
        check_lake(res.lake_uri)
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

        with default_instance() as instance, stop_on_sigterm():
            out = run_pipeline(res, instance, batches_per_run, progress, latest)
            if out.interrupted:
                bar.stop()
                console.print(
                    f"[red]pipeline interrupted after {len(out.runs)} runs: the interrupted run "
                    "failed and left nothing half-written; run `pharma-twin pipeline` again to "
                    "continue"
                )
                raise typer.Exit(130)
            # the daemon's sensors do this under `dagster dev`; a one-shot run does it here
            bar.update(task, description="audit trail and deviations")
            n_audit = audit_new_materializations(res.lake(), instance)
            n_dev = len(auto_open(res.lake()))
    console.print(
        f"pipeline: {len(out.batches)} batch partitions with new files, {len(out.runs)} runs, "
        f"{len(out.failed)} failed, {time.perf_counter() - t0:.1f} s; lake at {res.lake_uri}\n"
        f"  {n_audit} materializations recorded in the audit trail, {n_dev} deviations opened"
    )
    if out.orphaned:
        console.print(
            f"[yellow]runs left STARTED by a killed pipeline, now marked failed: "
            f"{', '.join(out.orphaned)}"
        )
    from .lake.alarms import input_alarms  # telemetry waiting for a start, held amendments

    for line in input_alarms(res.lake()).lines():
        console.print(f"[yellow]{line}", soft_wrap=True, highlight=False)
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
    check_lake(res.lake_uri)
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
    reference_batches: Annotated[
        str | None,
        typer.Option(
            help="MSPC/golden-batch reference batches: comma-separated ids or a file with one "
            "id per line (default: the batches the right-first-time rule passes)."
        ),
    ] = None,
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
    check_lake(res.lake_uri)
    if reference_batches is not None:
        os.environ["PHARMA_REFERENCE_BATCHES"] = reference_batches  # read by MlResource.from_env
    if res.lake().version("silver", "batches") is None:
        raise CliError(
            f"lake {res.lake_uri} has no table silver/batches: run `pharma-twin pipeline` first; "
            "if it reported telemetry waiting for a batch start, import batch events first "
            "(pharma-twin import --source mes, or --source infer-batches)"
        )
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
    console.print(
        f"trained on {n} completed batches in {time.perf_counter() - t0:.0f} s (run {r.run_id})"
    )
    import polars as pl

    from .defs.ml.resources import MlResource
    from .ml import registry

    caps = res.lake().read("gold", "model_capabilities", filter_expr=pl.col("run_id") == r.run_id)
    for row in [] if caps is None else caps.filter(~pl.col("applies")).iter_rows(named=True):
        what = f"{row['capability']} ({row['target']})" if row["target"] else row["capability"]
        console.print(
            f"[yellow]skipped[/] {escape(what)}: {escape(row['reason'])}",
            highlight=False,
            soft_wrap=True,
        )
    summaries = registry.training_summary("dagster_run_id", r.run_id, MlResource.from_env().uri())
    for line in training_lines(summaries):
        console.print(line, highlight=False, soft_wrap=True)
    if not summaries:
        console.print(
            "[red]no model could be trained on this lake's data (reasons above); "
            "see docs/bring_your_own_data.md"
        )
        raise typer.Exit(1)


def _num(v: float) -> str:
    return f"{v:.4g}" if v == v else "nan"


def training_lines(summaries: list[ModelSummary]) -> list[str]:
    """What `train` prints: per model its version, the promotion decision and reason, then
    every metric (against its target where it has one)."""
    from .ml.registry import NOT_PROMOTED, PROMOTED

    colour = {PROMOTED: "green", NOT_PROMOTED: "red"}
    lines = []
    n_champ = sum(s.promotion_decision == PROMOTED for s in summaries)
    n_pending = sum(s.promotion_state == "pending_approval" for s in summaries)
    lines.append(
        f"{len(summaries)} models trained, {n_champ} proposed by the gate: "
        f"{n_champ - n_pending} champion by signature, {n_pending} pending QA approval "
        "(`pharma-twin model pending`):"
    )
    for s in summaries:
        c = colour.get(s.promotion_decision, "yellow")
        verdict = s.promotion_decision.replace("_", " ").upper() or "UNKNOWN"
        lines.append(
            f"[bold]{escape(s.name)}[/] v{s.version}: [{c}]{verdict}[/] - "
            + escape(s.promotion_reason)
        )
        if s.promotion_note:
            lines.append(f"    -> {escape(s.promotion_note)}")
        with_target = []
        plain = []
        for k in sorted(s.metrics):
            v = s.metrics[k]
            if k in s.targets:
                met = s.target_met(k)
                word = "met" if met else "NOT met" if met is not None else "not computable"
                with_target.append(f"{k} = {_num(v)} (target {s.targets[k]:g}, {word})")
            else:
                plain.append(f"{k}={_num(v)}")
        lines += [f"    {t}" for t in with_target]
        if plain:
            lines.append("    " + "  ".join(plain))
    return lines


def _as_of(text: str | None) -> tuple[datetime | None, float | None]:
    """An as-of time: an ISO time (UTC), or days after inoculation such as 5.5."""
    if text is None:
        return None, None
    try:
        return None, float(text)
    except ValueError:
        return _parse_start(text), None


@app.command()
def whatif(
    batch: Annotated[str, typer.Argument(help="Batch id, e.g. BR01-B0007.")],
    as_of: Annotated[
        str | None,
        typer.Option(help="ISO time (UTC) or day after inoculation, e.g. 5.5 (default: latest)."),
    ] = None,
    shift_day: Annotated[float | None, typer.Option(help="Temperature-shift day.")] = None,
    production_temp: Annotated[
        float | None, typer.Option(help="Temperature after the shift, degC.")
    ] = None,
    ph: Annotated[float | None, typer.Option(help="pH set-point.")] = None,
    do: Annotated[float | None, typer.Option(help="DO set-point, % air saturation.")] = None,
    feed_scale: Annotated[float | None, typer.Option(help="Multiplier on the feed rate.")] = None,
    glucose_target: Annotated[float | None, typer.Option(help="Glucose bolus target, g/L.")] = None,
    harvest_day: Annotated[float | None, typer.Option(help="Harvest day.")] = None,
    members: Annotated[int, typer.Option(help="Twins in the calibrated ensemble.")] = 50,
    lake: Annotated[
        str | None, typer.Option(help="Lake root URI (default: $PHARMA_LAKE_URI or ./lakehouse).")
    ] = None,
    recipes: RecipeOpt = None,
) -> None:
    """Calibrate the twin to a batch at an as-of time and compare a scenario with the plan
    (harvest CQAs with 90 % ensemble intervals); see docs/optimisation.md."""
    from .optimise.calibration import CalibrationDataError
    from .optimise.report import format_whatif, whatif_for_batch
    from .optimise.whatif import Scenario, ScenarioRefused

    res_lake = _lakehouse(lake, None)
    check_lake(res_lake.lake_uri)
    batch = batch.strip().upper()  # batch ids are upper case (BR01-B0007)
    when, day = _as_of(as_of)
    scenario = Scenario(
        shift_day=shift_day,
        production_temp_c=production_temp,
        ph=ph,
        do_pct=do,
        feed_scale=feed_scale,
        glucose_target_g_l=glucose_target,
        harvest_day=harvest_day,
    )
    try:
        book = load_recipes(recipes)
        cal, res = whatif_for_batch(res_lake.lake(), batch, scenario, when, day, book, members)
    except (CalibrationDataError, ScenarioRefused, ConfigError, KeyError, ValueError) as e:
        console.print(str(e).strip("'"), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    typer.echo("\n".join(format_whatif(cal, res)))


# live gateway commands (gateway, gateway-api)
from .gateway.cli import register as _register_gateway  # noqa: E402

_register_gateway(app)

# GxP commands (users, audit, deviation, spec, sign, release, ebr, backup)
from .compliance.cli import register as _register_compliance  # noqa: E402

_register_compliance(app)
from .compliance.cli import LakeOpt, audit_app  # noqa: E402


@audit_app.command("record-materializations")
def audit_record_materializations(lake: LakeOpt = None) -> None:
    """Write this lake's materializations from the Dagster instance not yet in its trail (what
    the materialization_audit sensor does; other lakes' runs are counted, not recorded)."""
    from .defs.compliance.materializations import audit_materializations
    from .lake.storage import Lake, lake_uri_from_env
    from .pipeline import default_instance

    uri = lake or lake_uri_from_env()
    check_lake(uri)
    with default_instance() as inst:
        done, _ = audit_materializations(Lake.from_env(uri), inst)
    typer.echo(done.summary())


from .compliance.model_cli import model_app  # noqa: E402

app.add_typer(model_app, name="model")  # model promotions (docs/models.md)


if __name__ == "__main__":
    app()
