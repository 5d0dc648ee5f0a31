"""MLflow tracking and the model registry: one place that knows how models are recorded.

Why a module of its own: every model of the ``ml`` group (predictive maintenance, batch
quality, contamination, MSPC) is trained, logged, registered and promoted the same way, and
the dashboards list the registered versions. Training code builds a :class:`TrainedModel`
and calls :func:`register`; scoring code calls :func:`load_champion`.

Choices (see docs/models.md, "MLflow"):

* The tracking store is SQLite (mlflow 3.17 refuses a plain ``./mlruns`` file store):
  ``PHARMA_MLFLOW_URI`` or ``sqlite:///<repo>/.state/mlflow/mlflow.db``. Artifacts of a
  SQLite store live in an ``artifacts`` folder next to the database; the experiment's
  ``artifact_location`` is set explicitly so they never land in the working directory.
* We use ``mlflow.MlflowClient`` with an explicit tracking URI rather than the global
  ``mlflow.start_run`` state or the legacy ``dagster_mlflow.mlflow_tracking`` resource: the
  same code runs inside a Dagster asset, a test with its own SQLite store, the CLI and the
  benchmark, and several models can be logged in one process without global state.
* The model is a pickled artifact (``model/model.pkl``); the registered version's source is
  that artifact folder. The champion is the version with the alias ``champion``.
* Promotion gate (:func:`promotion_gate`, a pure function): a new version is PROPOSED as
  champion only if it meets its :class:`Minimum` (regressors: R² > 0 and better than the naive
  baseline of predicting the training mean on the same held-out rows; detectors: detection
  evaluated on at least one positive case, and better than a detector that never alarms)
  AND its gate metric is at least as good as the current champion's on the SAME held-out
  set (the caller passes a function that scores any model on that set). A version that
  fails the minimum, or cannot be evaluated, is registered but not promoted. The decision
  and its reason are version tags (``promotion_decision``, ``promotion_reason``), the scores
  version tags and run metrics.
* :func:`register` never moves the ``champion`` alias: a proposal becomes champion only
  through ``pharma_assets.compliance.promotions`` (a QA e-signature bound to the version's
  :func:`model_sha256`, or the system's signature under the change-controlled
  auto-promotion policy), which calls :func:`set_champion` (docs/models.md, "Signed
  promotion").
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import polars as pl

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
MODEL_ARTIFACT_DIR = "model"
MODEL_FILE = "model.pkl"
EXPERIMENT_PREFIX = "pharma/"
_PARAM_MAX = 6000  # MLflow's limit on a parameter value

PERFORMANCE_SCHEMA: dict[str, pl.DataType] = {
    "model_name": pl.String(),
    "model_version": pl.String(),
    "metric": pl.String(),
    "value": pl.Float64(),
    "target": pl.Float64(),
    "target_met": pl.Boolean(),
    "evaluation_set": pl.String(),
    "n": pl.Int64(),
    "is_champion": pl.Boolean(),
    "mlflow_run_id": pl.String(),
    "computed_at": pl.Datetime("us", "UTC"),
}

MODELS_SCHEMA: dict[str, pl.DataType] = {
    "name": pl.String(),
    "version": pl.String(),
    "is_champion": pl.Boolean(),
    "created_at": pl.Datetime("us", "UTC"),
    "run_id": pl.String(),
    "gate_metric": pl.String(),
    "score": pl.Float64(),
    "promotion_decision": pl.String(),
    "promotion_reason": pl.String(),
    "promotion_state": pl.String(),
}

PROMOTED = "promoted"
NOT_PROMOTED = "not_promoted"  # failed its minimum, or could not be evaluated
KEPT_CHAMPION = "kept_champion"  # met its minimum, but the champion is better
BASELINE_PREFIX = "baseline_"  # metrics["baseline_mae"]: the naive model's mae on the same rows


@dataclass(frozen=True)
class Minimum:
    """The least a model must show on its held-out set before it may become champion.

    ``kind="regressor"``: R² finite and > 0, and every metric ``m`` with a naive baseline
    ``baseline_<m>`` among the metrics (at least one is required; the training mean
    predicted for the same held-out rows) strictly better than that baseline.
    ``kind="detector"``: ``positives_metric`` (the number of positive cases the detection
    figures were computed on) present and >= 1.
    Both: the gate metric finite, every ``floors`` metric finite and strictly better than
    its floor (direction from the metric's name; e.g. ``{"roc_auc": 0.5}``, or
    ``{"detection_share": 0.0}`` for "detects more than a detector that never alarms").
    """

    kind: Literal["regressor", "detector"]
    positives_metric: str | None = None
    floors: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    """The promotion gate's verdict on one new version (``decision``: PROMOTED,
    NOT_PROMOTED or KEPT_CHAMPION) and why, in one sentence."""

    decision: str
    reason: str

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED

    @property
    def text(self) -> str:
        return f"{self.decision.replace('_', ' ')}: {self.reason}"


@dataclass
class TrainedModel:
    """Everything a training function hands to the registry about one fitted model."""

    name: str  # registered model name, e.g. "pharma_pdm_failure_72h"
    model: Any  # picklable object
    params: dict[str, Any]
    features: list[str]
    data_versions: dict[str, int | None]  # "silver/batch_timeline" -> Delta version read
    metrics: dict[str, float]  # held-out metrics of this model
    gate_metric: str  # key of metrics used by the champion/challenger gate
    higher_is_better: bool
    evaluation_set: str  # e.g. "holdout: batches started after 2025-06-01 (n=25)"
    n_eval: int
    targets: dict[str, float] = field(default_factory=dict)  # metric -> brief target
    # extra tables logged as Parquet artifacts under evaluation/, e.g. the held-out
    # predictions every reported metric is computed from (tests recompute them from there)
    artifacts: dict[str, pl.DataFrame] = field(default_factory=dict)
    # what it must show before it may become champion; None: never promoted (the gate
    # cannot tell whether it is any good)
    minimum: Minimum | None = None


@dataclass
class Registration:
    """The outcome of :func:`register`: which version and the gate's decision. ``promoted``
    is True only once the version has become champion (set by the signed promotion step,
    never by :func:`register` itself); ``proposed``: the gate proposes it as champion."""

    name: str
    version: str
    run_id: str
    promoted: bool
    challenger_score: float
    champion_score: float | None
    champion_version: str | None
    decision: str = ""  # "<promotion_decision>: <promotion_reason>"
    promotion_decision: str = ""  # PROMOTED, NOT_PROMOTED or KEPT_CHAMPION
    promotion_reason: str = ""
    gate_metric: str = ""
    promotion_state: str = ""  # set by compliance.promotions: pending or approved

    @property
    def proposed(self) -> bool:
        return self.promotion_decision == PROMOTED


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def tracking_uri() -> str:
    """The tracking store: ``PHARMA_MLFLOW_URI``, else SQLite under ``<repo>/.state/mlflow``."""
    env = os.environ.get("PHARMA_MLFLOW_URI")
    if env:
        _ensure_sqlite_folder(env)
        return env
    folder = _repo_root() / ".state" / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///") :]))


def _ensure_sqlite_folder(uri: str) -> None:
    p = _sqlite_path(uri)
    if p is not None:
        p.parent.mkdir(parents=True, exist_ok=True)


def artifact_root(uri: str) -> str | None:
    """Where a store's artifacts go: ``<folder of the SQLite db>/artifacts`` (file URI).

    None for a remote tracking server, which has its own artifact store.
    """
    p = _sqlite_path(uri)
    if p is None:
        if uri.startswith("file:"):
            raise ValueError(
                f"PHARMA_MLFLOW_URI={uri!r}: mlflow 3.17 no longer supports file stores; "
                "use sqlite:///<path>/mlflow.db or an http(s) tracking server"
            )
        return None
    folder = p.parent / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve().as_uri()


def _client(uri: str | None) -> Any:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    _ensure_sqlite_folder(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client: Any, name: str, uri: str) -> str:
    exp_name = EXPERIMENT_PREFIX + name
    exp = client.get_experiment_by_name(exp_name)
    if exp is not None:
        return str(exp.experiment_id)
    root = artifact_root(uri)
    location = None if root is None else f"{root}/{name}"
    return str(client.create_experiment(exp_name, artifact_location=location))


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _param_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)
    return s if len(s) <= _PARAM_MAX else s[: _PARAM_MAX - 20] + "...(truncated)"


def _metric_key(k: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in k)


def _is_better_or_equal(challenger: float, champion: float, higher_is_better: bool) -> bool:
    return challenger >= champion if higher_is_better else challenger <= champion


def _fmt(v: float | None) -> str:
    return "absent" if v is None else f"{v:.4g}"


def _beats(value: float, bar: float, metric: str) -> bool:
    return value > bar if _higher_is_better_metric(metric) else value < bar


def minimum_shortfall(
    metrics: Mapping[str, float | None], minimum: Minimum | None, gate_metric: str
) -> str | None:
    """Why a model does not meet its minimum (one sentence), or None if it does."""
    if minimum is None:
        return "no minimum declared for this model, so the gate cannot tell whether it is any good"

    def val(k: str) -> float | None:
        v = metrics.get(k)
        return float(v) if _finite(v) else None  # type: ignore[arg-type]

    if val(gate_metric) is None:
        return f"cannot be evaluated: gate metric {gate_metric} is {_fmt(metrics.get(gate_metric))}"
    if minimum.kind == "regressor":
        r2 = val("r2")
        if r2 is None:
            return f"cannot be evaluated: R² is {_fmt(metrics.get('r2'))} on the held-out set"
        if r2 <= 0:
            return (
                f"R² {r2:.3f} <= 0 on the held-out set: no better than predicting the held-out mean"
            )
        baselines = {
            k.removeprefix(BASELINE_PREFIX): v
            for k, v in metrics.items()
            if k.startswith(BASELINE_PREFIX) and k.removeprefix(BASELINE_PREFIX) in metrics
        }
        if not baselines:
            return "cannot be evaluated: no naive baseline (baseline_<metric>) was computed"
        for m, b in sorted(baselines.items()):
            v = val(m)
            if v is None or not _finite(b):
                return f"cannot be evaluated: {m} is {_fmt(v)}, its naive baseline {_fmt(b)}"
            if not _beats(v, float(b), m):  # type: ignore[arg-type]
                return (
                    f"{m} {v:.4g} is no better than the naive baseline (training mean on the "
                    f"same held-out rows) {float(b):.4g}"  # type: ignore[arg-type]
                )
    elif minimum.kind == "detector":
        pm = minimum.positives_metric
        if pm is None:
            return "cannot be evaluated: the detector does not say how many positive cases it saw"
        n = val(pm)
        if n is None:
            return (
                f"detection not evaluated: {pm} is {_fmt(metrics.get(pm))} (no labelled "
                "positive case to evaluate against)"
            )
        if n < 1:
            return f"detection not evaluated: no positive case in the held-out set ({pm} = 0)"
    else:
        return f"unknown model kind {minimum.kind!r} (regressor or detector)"
    for m, floor in sorted(minimum.floors.items()):
        v = val(m)
        if v is None:
            return f"cannot be evaluated: {m} is {_fmt(metrics.get(m))}"
        if not _beats(v, floor, m):
            op = ">" if _higher_is_better_metric(m) else "<"
            return f"{m} {v:.4g} does not reach the minimum ({op} {floor:g})"
    return None


def promotion_gate(
    metrics: Mapping[str, float | None],
    gate_metric: str,
    higher_is_better: bool,
    minimum: Minimum | None,
    champion_version: str | None = None,
    champion_score: float | None = None,
    champion_note: str = "",
) -> GateDecision:
    """Should a new version become champion? A pure function of its held-out metrics, its
    :class:`Minimum` and the current champion's gate score on the same held-out set (None:
    no champion, or its score is unusable; ``champion_note`` says how it was obtained).

    Not promoted if it fails the minimum or cannot be evaluated; otherwise promoted if there
    is no champion (or none with a usable score) or it is at least as good as the champion.
    """
    shortfall = minimum_shortfall(metrics, minimum, gate_metric)
    keep = f"; champion v{champion_version} stays" if champion_version else ""
    if shortfall is not None:
        return GateDecision(NOT_PROMOTED, shortfall + keep)
    challenger = float(metrics[gate_metric])  # type: ignore[arg-type]
    met = f"meets its minimum ({_minimum_text(metrics, minimum)})"
    if champion_version is None:
        return GateDecision(PROMOTED, f"first version to meet its minimum; {met}")
    if champion_score is None or not math.isfinite(champion_score):
        return GateDecision(
            PROMOTED, f"champion v{champion_version} has no usable score ({champion_note}); {met}"
        )
    op = ">=" if higher_is_better else "<="
    better = _is_better_or_equal(challenger, champion_score, higher_is_better)
    cmp = (
        f"{gate_metric} {challenger:.6g} {op if better else 'not ' + op} champion "
        f"v{champion_version} {champion_score:.6g} ({champion_note})"
    )
    if better:
        return GateDecision(PROMOTED, f"{cmp}; {met}")
    return GateDecision(KEPT_CHAMPION, f"{cmp}; champion v{champion_version} stays")


def _minimum_text(metrics: Mapping[str, float | None], minimum: Minimum | None) -> str:
    if minimum is None:
        return ""
    parts = []
    if minimum.kind == "regressor":
        parts.append(f"R² {float(metrics['r2']):.3f} > 0")  # type: ignore[arg-type]
        for k in sorted(metrics):
            m = k.removeprefix(BASELINE_PREFIX)
            if k.startswith(BASELINE_PREFIX) and m in metrics:
                parts.append(f"{m} {float(metrics[m]):.4g} vs naive {float(metrics[k]):.4g}")  # type: ignore[arg-type]
    elif minimum.positives_metric:
        parts.append(f"{minimum.positives_metric} = {float(metrics[minimum.positives_metric]):g}")  # type: ignore[arg-type]
    for m, floor in sorted(minimum.floors.items()):
        op = ">" if _higher_is_better_metric(m) else "<"
        parts.append(f"{m} {float(metrics[m]):.4g} {op} {floor:g}")  # type: ignore[arg-type]
    return ", ".join(parts)


def _load_version_model(client: Any, name: str, version: str) -> Any:
    mv = client.get_model_version(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(mv.run_id, f"{MODEL_ARTIFACT_DIR}/{MODEL_FILE}", tmp)
        with open(local, "rb") as fh:
            return pickle.load(fh)  # our own artifact, written by register()


def register(
    trained: TrainedModel,
    champion_score_fn: Callable[[Any], float] | None,
    uri: str | None = None,
) -> Registration:
    """Log one training run, register it as a new version and apply :func:`promotion_gate`.

    ``champion_score_fn(model)`` scores a model on the same held-out set as
    ``trained.metrics[trained.gate_metric]``. The gate proposes the new version as champion
    iff it meets ``trained.minimum`` and there is no champion, or its score is at least as
    good as the champion's; the decision and reason are tags of the version. The champion
    alias is NOT moved here: ``compliance.promotions.propose`` records the proposal and
    only a signature (QA, or the system under the approved auto-promotion policy) makes it
    champion. If the champion cannot
    be scored (``champion_score_fn`` is None or raises, e.g. because the feature set
    changed), the champion's recorded score is used and the reason is recorded.
    """
    if trained.gate_metric not in trained.metrics:
        raise ValueError(
            f"model {trained.name!r}: gate_metric {trained.gate_metric!r} is not among its "
            f"metrics {sorted(trained.metrics)}; add it to metrics or choose another"
        )
    uri = uri or tracking_uri()
    client = _client(uri)
    exp_id = _experiment_id(client, trained.name, uri)
    now = datetime.now(UTC)
    run = client.create_run(
        exp_id,
        run_name=f"{trained.name}-{now:%Y%m%dT%H%M%SZ}",
        tags={
            "model_name": trained.name,
            "evaluation_set": trained.evaluation_set,
            "gate_metric": trained.gate_metric,
            **{f"data_version.{k}": str(v) for k, v in trained.data_versions.items()},
        },
    )
    run_id = run.info.run_id
    challenger = float(trained.metrics[trained.gate_metric])
    try:
        from mlflow.entities import Metric, Param

        ts = int(now.timestamp() * 1000)
        params = {str(k): _param_value(v) for k, v in trained.params.items()}
        params["features"] = _param_value(",".join(trained.features))
        params["n_features"] = str(len(trained.features))
        params["n_eval"] = str(trained.n_eval)
        params["evaluation_set"] = _param_value(trained.evaluation_set)
        for k, dv in trained.data_versions.items():
            params[f"data_version.{k}"] = str(dv)
        for k, tv in trained.targets.items():
            params[f"target.{k}"] = repr(float(tv))
        params["higher_is_better"] = str(trained.higher_is_better)
        metrics = [
            Metric(_metric_key(k), float(v), ts, 0)
            for k, v in trained.metrics.items()
            if v is not None
        ]
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        with tempfile.TemporaryDirectory() as tmp:
            mdir = Path(tmp) / MODEL_ARTIFACT_DIR
            mdir.mkdir()
            with open(mdir / MODEL_FILE, "wb") as fh:
                pickle.dump(trained.model, fh)
            (mdir / "features.json").write_text(json.dumps(trained.features, indent=1))
            (mdir / "data_versions.json").write_text(json.dumps(trained.data_versions))
            client.log_artifacts(run_id, str(mdir), MODEL_ARTIFACT_DIR)
            client.log_artifact(run_id, str(mdir / "features.json"))
            if trained.artifacts:
                edir = Path(tmp) / "evaluation"
                edir.mkdir()
                for aname, frame in trained.artifacts.items():
                    frame.write_parquet(edir / f"{aname}.parquet")
                client.log_artifacts(run_id, str(edir), "evaluation")

        # current champion, scored on the same held-out set
        champ_version: str | None = None
        champ_score: float | None = None
        reason = ""
        try:
            champ = client.get_model_version_by_alias(trained.name, CHAMPION_ALIAS)
            champ_version = str(champ.version)
        except Exception:  # no registered model or no alias yet
            champ = None
        if champ is not None:
            if champion_score_fn is not None and champ_version is not None:
                try:
                    champ_score = float(
                        champion_score_fn(_load_version_model(client, trained.name, champ_version))
                    )
                    reason = "champion re-scored on the same held-out set"
                except Exception as e:  # incompatible features etc.
                    reason = f"champion could not be re-scored ({type(e).__name__}: {e}); "
            if champ_score is None:
                recorded = champ.tags.get("score")
                champ_score = float(recorded) if recorded not in (None, "", "nan") else None
                reason += "compared with the champion's recorded score"

        gate = promotion_gate(
            trained.metrics,
            trained.gate_metric,
            trained.higher_is_better,
            trained.minimum,
            champ_version,
            champ_score,
            reason,
        )
        decision = gate.text

        try:
            client.get_registered_model(trained.name)
        except Exception:
            client.create_registered_model(
                trained.name, description=f"pharma-twin model {trained.name}"
            )
        source = f"{run.info.artifact_uri}/{MODEL_ARTIFACT_DIR}"
        mv = client.create_model_version(
            trained.name,
            source,
            run_id=run_id,
            tags={
                "gate_metric": trained.gate_metric,
                "higher_is_better": str(trained.higher_is_better),
                "score": repr(challenger),
                "challenger_score": repr(challenger),
                "champion_score": "" if champ_score is None else repr(champ_score),
                "champion_version": champ_version or "",
                "promoted": "False",  # True once a signed promotion made it champion
                "decision": decision,
                "promotion_decision": gate.decision,
                "promotion_reason": gate.reason,
                "evaluation_set": trained.evaluation_set,
            },
        )
        version = str(mv.version)
        gate_metrics = [Metric("gate_challenger_score", challenger, ts, 0)]
        gate_metrics.append(Metric("gate_proposed", 1.0 if gate.promoted else 0.0, ts, 0))
        if champ_score is not None:
            gate_metrics.append(Metric("gate_champion_score", champ_score, ts, 0))
        client.log_batch(run_id, metrics=gate_metrics)
        client.set_tag(run_id, "registered_version", version)
        client.set_tag(run_id, "gate_decision", decision)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    log.info("%s v%s: %s", trained.name, version, decision)
    return Registration(
        name=trained.name,
        version=version,
        run_id=run_id,
        promoted=False,
        challenger_score=challenger,
        champion_score=champ_score,
        champion_version=champ_version,
        decision=decision,
        promotion_decision=gate.decision,
        promotion_reason=gate.reason,
        gate_metric=trained.gate_metric,
    )


def model_sha256(name: str, version: str, uri: str | None = None) -> str:
    """SHA-256 that identifies a registered version's model: over the version's name and
    number and the path and SHA-256 of every file of its model artifact folder (the pickled
    model, its feature list, its data versions). A promotion signature binds this hash, so
    it cannot be moved to another version, and a changed artifact no longer verifies."""
    client = _client(uri)
    mv = client.get_model_version(name, version)
    h = hashlib.sha256(f"{name}\n{version}\n".encode())
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(mv.run_id, MODEL_ARTIFACT_DIR, tmp))
        files = sorted(p for p in local.rglob("*") if p.is_file())
        if not files:
            raise ValueError(f"model {name!r} v{version}: its artifact folder holds no file")
        for p in files:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            h.update(f"{p.relative_to(local).as_posix()}\t{digest}\n".encode())
    return h.hexdigest()


def version_info(name: str, version: str, uri: str | None = None) -> dict[str, Any]:
    """A registered version's run id and tags (KeyError-free: {} tags when absent)."""
    mv = _client(uri).get_model_version(name, version)
    return {"run_id": mv.run_id, "tags": dict(mv.tags or {})}


def champion_version(name: str, uri: str | None = None) -> str | None:
    """The version that holds the ``champion`` alias, None if there is none."""
    try:
        return str(_client(uri).get_model_version_by_alias(name, CHAMPION_ALIAS).version)
    except Exception:  # no registered model or no alias
        return None


def set_version_tags(
    name: str, version: str, tags: Mapping[str, str], uri: str | None = None
) -> None:
    client = _client(uri)
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)


def set_champion(name: str, version: str, uri: str | None = None) -> None:
    """Move the ``champion`` alias to ``version``. Called only by
    ``compliance.promotions`` after the promotion was signed; the tags ``promoted`` of the
    new and the previous champion follow."""
    client = _client(uri)
    before = champion_version(name, uri)
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    client.set_model_version_tag(name, version, "promoted", "True")
    if before is not None and before != version:
        client.set_model_version_tag(name, before, "promoted", "False")


def load_champion(name: str, uri: str | None = None) -> tuple[Any, str] | None:
    """The champion model of ``name`` and its version, or None if there is none yet."""
    client = _client(uri)
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except Exception:
        return None
    return _load_version_model(client, name, str(mv.version)), str(mv.version)


def load_artifact_table(run_id: str, name: str, uri: str | None = None) -> pl.DataFrame:
    """A table logged with ``TrainedModel.artifacts`` (e.g. ``holdout_predictions``)."""
    client = _client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, f"evaluation/{name}.parquet", tmp)
        return pl.read_parquet(local)


def load_version(name: str, version: str, uri: str | None = None) -> Any:
    """A registered version's model (for audits and tests)."""
    return _load_version_model(_client(uri), name, version)


def performance_rows(trained: TrainedModel, reg: Registration) -> pl.DataFrame:
    """Rows for gold/model_performance: one per metric of this training run."""
    now = datetime.now(UTC)
    rows = []
    for metric, value in trained.metrics.items():
        target = trained.targets.get(metric)
        v = None if value is None else float(value)
        met: bool | None = None
        if target is not None and v is not None and math.isfinite(v):
            met = v >= target if _higher_is_better_metric(metric) else v <= target
        rows.append(
            {
                "model_name": trained.name,
                "model_version": reg.version,
                "metric": metric,
                "value": v,
                "target": None if target is None else float(target),
                "target_met": met,
                "evaluation_set": trained.evaluation_set,
                "n": int(trained.n_eval),
                "is_champion": reg.promoted,
                "mlflow_run_id": reg.run_id,
                "computed_at": now,
            }
        )
    return pl.DataFrame(rows, schema=PERFORMANCE_SCHEMA)


# Metrics whose target is an upper bound (lower is better); every other target is a floor.
_LOWER_IS_BETTER_PREFIXES = (
    "mae",
    "rmse",
    "false_alarm",
    "false_positive",
    "fpr",
    "median_delay",
    "delay",
    "brier",
    "log_loss",
)


def _higher_is_better_metric(metric: str) -> bool:
    m = metric.lower()
    return not any(m.startswith(p) or f"_{p}" in m for p in _LOWER_IS_BETTER_PREFIXES)


def list_models(uri: str | None = None) -> pl.DataFrame:
    """Every registered version: name, version, is_champion, created_at, run_id, gate metric
    and its score on the evaluation set (for the dashboards)."""
    client = _client(uri)
    rows = []
    for rm in client.search_registered_models(max_results=1000):
        champion = (rm.aliases or {}).get(CHAMPION_ALIAS)
        for mv in client.search_model_versions(f"name='{rm.name}'", max_results=10000):
            score = mv.tags.get("score")
            rows.append(
                {
                    "name": rm.name,
                    "version": str(mv.version),
                    "is_champion": champion is not None and str(champion) == str(mv.version),
                    "created_at": datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC),
                    "run_id": mv.run_id,
                    "gate_metric": mv.tags.get("gate_metric"),
                    "score": float(score) if score not in (None, "") else None,
                    # versions registered before the gate recorded only "decision"
                    "promotion_decision": mv.tags.get("promotion_decision"),
                    "promotion_reason": mv.tags.get("promotion_reason") or mv.tags.get("decision"),
                    "promotion_state": mv.tags.get("promotion_state"),
                }
            )
    df = pl.DataFrame(rows, schema=MODELS_SCHEMA)
    return df.sort(["name", pl.col("version").cast(pl.Int64)])


def tag_run(run_id: str, tags: dict[str, str], uri: str | None = None) -> None:
    """Add tags to a logged run (e.g. the Dagster run that trained it)."""
    client = _client(uri)
    for k, v in tags.items():
        client.set_tag(run_id, k, v)


def _runs_for_tag(client: Any, key: str, value: str) -> list[Any]:
    from mlflow.entities import ViewType

    exps = [
        e.experiment_id
        for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000)
        if e.name.startswith(EXPERIMENT_PREFIX)
    ]
    if not exps:
        return []
    return list(client.search_runs(exps, filter_string=f"tags.{key} = '{value}'", max_results=5000))


@dataclass
class ModelSummary:
    """One model trained in a run: its version, the gate's decision and reason, every metric
    and the targets some of them have (what `pharma-twin train` prints)."""

    name: str
    version: str
    promotion_decision: str
    promotion_reason: str
    gate_metric: str
    evaluation_set: str
    metrics: dict[str, float]
    targets: dict[str, float]
    promotion_state: str = ""  # compliance.promotions: pending_approval, approved, ...
    promotion_note: str = ""

    def target_met(self, metric: str) -> bool | None:
        t, v = self.targets.get(metric), self.metrics.get(metric)
        if t is None or v is None or not math.isfinite(v):
            return None
        return v >= t if _higher_is_better_metric(metric) else v <= t


def training_summary(key: str, value: str, uri: str | None = None) -> list[ModelSummary]:
    """Every model version registered by the training runs tagged ``key=value`` (e.g. the
    Dagster run of `pharma-twin train`), sorted by name."""
    client = _client(uri)
    out = []
    for r in _runs_for_tag(client, key, value):
        tags, params = r.data.tags, r.data.params
        version = tags.get("registered_version")
        if version is None:
            continue
        name = tags.get("model_name", "")
        mv = client.get_model_version(name, version)
        out.append(
            ModelSummary(
                name=name,
                version=str(version),
                promotion_decision=mv.tags.get("promotion_decision", ""),
                promotion_reason=mv.tags.get("promotion_reason") or mv.tags.get("decision", ""),
                gate_metric=tags.get("gate_metric", ""),
                evaluation_set=tags.get("evaluation_set", ""),
                metrics={
                    k: float(v) for k, v in r.data.metrics.items() if not k.startswith("gate_")
                },
                targets={
                    k.removeprefix("target."): float(v)
                    for k, v in params.items()
                    if k.startswith("target.")
                },
                promotion_state=mv.tags.get("promotion_state", ""),
                promotion_note=mv.tags.get("promotion_note", ""),
            )
        )
    return sorted(out, key=lambda m: (m.name, int(m.version)))


def performance_rows_for_tag(key: str, value: str, uri: str | None = None) -> pl.DataFrame:
    """gold/model_performance rows rebuilt from MLflow for every training run tagged
    ``key=value`` (e.g. all models a Dagster run trained): MLflow is the system of record,
    the gold table is its queryable copy."""
    client = _client(uri)
    runs = _runs_for_tag(client, key, value)
    if not runs:
        return pl.DataFrame(schema=PERFORMANCE_SCHEMA)
    rows = []
    for r in runs:
        tags, params = r.data.tags, r.data.params
        version = tags.get("registered_version")
        if version is None:
            continue
        name = tags.get("model_name", "")
        mv = client.get_model_version(name, version)
        promoted = mv.tags.get("promoted") == "True"
        computed = datetime.fromtimestamp((r.info.end_time or r.info.start_time) / 1000, tz=UTC)
        for metric, v in r.data.metrics.items():
            if metric.startswith("gate_"):
                continue
            t = params.get(f"target.{metric}")
            target = float(t) if t is not None else None
            met: bool | None = None
            if target is not None and math.isfinite(v):
                met = v >= target if _higher_is_better_metric(metric) else v <= target
            rows.append(
                {
                    "model_name": name,
                    "model_version": version,
                    "metric": metric,
                    "value": float(v),
                    "target": target,
                    "target_met": met,
                    "evaluation_set": tags.get("evaluation_set", ""),
                    "n": int(params.get("n_eval", "0")),
                    "is_champion": promoted,
                    "mlflow_run_id": r.info.run_id,
                    "computed_at": computed,
                }
            )
    return pl.DataFrame(rows, schema=PERFORMANCE_SCHEMA).sort("model_name", "metric")
