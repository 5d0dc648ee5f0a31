"""Model promotions under change control: the gate proposes, a signature promotes.

Why: a model that flags contamination, predicts titer or warns of a failing pump drives
alarms and release decisions, so a new champion is a GMP change. The promotion gate
(``ml.registry.promotion_gate``) only PROPOSES a version; it becomes champion (the MLflow
alias ``champion``) when

- a person whose role grants ``model.approve`` (QA) signs the proposal: ID and password
  again, meaning ``approval``, a reason (:func:`approve`; :func:`reject` signs the refusal);
- or the auto-promotion policy (``promotion_policy.yaml``, a change-controlled document:
  target ``promotion_policy`` of ``changecontrol``) allows it: the system signs, as
  ``system:auto-promotion`` with the policy's id, version and change id in the printed name,
  only while the policy file in use is exactly the last approved version.

The signed record binds the model version: name, version and :func:`registry.model_sha256`
(the SHA-256 over every file of the version's model artifact), plus the gate's figures. A
signature of one version therefore fails on any other version, and on the same version
whose artifact was changed (:func:`verify_champions`). Every proposal, approval, rejection
and supersession is a row of ``<lake>/gxp/model_promotions`` (append-only; the state of a
proposal is its newest row) and an entry of the audit trail; MLflow version tags
(``promotion_state``, ``promotion_id``, ``promotion_note``) mirror it for the UIs.
"""

from __future__ import annotations

import fnmatch
import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from pharma_assets.lake.storage import UTC_US, Lake
from pharma_assets.ml import registry

from . import GXP_LAYER
from .audit import GXP_TABLE_CONFIGURATION, AuditTrail
from .changecontrol import check_in_use, history
from .signatures import Signature, sign, sign_as_system, signatures_for, verify_signature

TABLE = "model_promotions"
RECORD_TYPE = "model_promotion"
POLICY_TARGET = "promotion_policy"
PERMISSION = "model.approve"
GATE_ACTOR = "system:promotion_gate"
SYSTEM_SIGNER = "system:auto-promotion"
DEFAULT_POLICY = Path(__file__).with_name("promotion_policy.yaml")
POLICY_ENV = "PHARMA_PROMOTION_POLICY"

PENDING, APPROVED, REJECTED, SUPERSEDED = "pending", "approved", "rejected", "superseded"

SCHEMA: dict[str, pl.DataType] = {
    "promotion_id": pl.String(),
    "model_name": pl.String(),
    "version": pl.String(),
    "state": pl.String(),
    "model_sha256": pl.String(),
    "run_id": pl.String(),
    "gate_metric": pl.String(),
    "challenger_score": pl.Float64(),
    "champion_version": pl.String(),
    "champion_score": pl.Float64(),
    "gate_reason": pl.String(),
    "actor": pl.String(),
    "signature_id": pl.String(),
    "policy": pl.String(),
    "note": pl.String(),
    "at": UTC_US,
}


def policy_path() -> Path:
    """The auto-promotion policy in use: ``$PHARMA_PROMOTION_POLICY`` or the built-in file."""
    return Path(os.environ.get(POLICY_ENV) or DEFAULT_POLICY)


# ---------------------------------------------------------------------------- policy
@dataclass(frozen=True)
class PolicyRule:
    models: str
    first_version: bool
    min_gate_improvement: float | None


@dataclass(frozen=True)
class Policy:
    policy_id: str
    version: int
    rules: tuple[PolicyRule, ...]

    def rule_for(self, model_name: str) -> PolicyRule | None:
        return next((r for r in self.rules if fnmatch.fnmatchcase(model_name, r.models)), None)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; ValueError naming the file and the bad field."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"auto-promotion policy {p}: cannot be read ({e})") from e
    if not isinstance(doc, dict):
        raise ValueError(f"auto-promotion policy {p}: expected a mapping, got {type(doc).__name__}")
    pid, ver, rules = doc.get("policy_id"), doc.get("version"), doc.get("rules")
    if not isinstance(pid, str) or not pid.strip():
        raise ValueError(f"auto-promotion policy {p}: policy_id must be a non-empty text")
    if not isinstance(ver, int) or isinstance(ver, bool) or ver < 1:
        raise ValueError(f"auto-promotion policy {p}: version must be an integer >= 1, not {ver!r}")
    if not isinstance(rules, list):
        raise ValueError(f"auto-promotion policy {p}: rules must be a list, not {rules!r}")
    out = []
    for i, r in enumerate(rules):
        where = f"auto-promotion policy {p}: rules[{i}]"
        if not isinstance(r, dict) or set(r) - {"models", "first_version", "min_gate_improvement"}:
            raise ValueError(
                f"{where} must have only models, first_version, min_gate_improvement; got {r!r}"
            )
        models, first, imp = (
            r.get("models"),
            r.get("first_version", False),
            r.get("min_gate_improvement"),
        )
        if not isinstance(models, str) or not models:
            raise ValueError(f"{where}.models must be a name pattern, not {models!r}")
        if not isinstance(first, bool):
            raise ValueError(f"{where}.first_version must be true or false, not {first!r}")
        if imp is not None and (
            isinstance(imp, bool) or not isinstance(imp, (int, float)) or not imp >= 0
        ):
            raise ValueError(
                f"{where}.min_gate_improvement must be a number >= 0 or null, not {imp!r}"
            )
        out.append(PolicyRule(models, first, None if imp is None else float(imp)))
    return Policy(pid.strip(), ver, tuple(out))


def policy_allows(
    policy: Policy,
    model_name: str,
    champion_version: str | None,
    champion_score: float | None,
    challenger_score: float,
    higher_is_better: bool,
) -> tuple[bool, str]:
    """May the system sign this proposal? (allowed, why) - a pure function."""
    rule = policy.rule_for(model_name)
    tag = f"policy {policy.policy_id} v{policy.version}"
    if rule is None:
        return False, f"{tag}: no rule matches {model_name}"
    if champion_version is None:
        if rule.first_version:
            return True, f"{tag}, rule {rule.models!r}: first version of the model"
        return False, f"{tag}, rule {rule.models!r}: a first version needs a QA signature"
    if rule.min_gate_improvement is None:
        return False, f"{tag}, rule {rule.models!r}: replacing a champion needs a QA signature"
    if champion_score is None or not math.isfinite(champion_score):
        return False, f"{tag}: the champion v{champion_version} has no usable score"
    gain = (
        challenger_score - champion_score if higher_is_better else champion_score - challenger_score
    )
    if gain >= rule.min_gate_improvement:
        return True, (
            f"{tag}, rule {rule.models!r}: beats champion v{champion_version} by "
            f"{gain:.4g} >= {rule.min_gate_improvement:g}"
        )
    return False, (
        f"{tag}, rule {rule.models!r}: improvement over champion v{champion_version} "
        f"{gain:.4g} < {rule.min_gate_improvement:g}; needs a QA signature"
    )


def approved_policy(lake: Lake, path: str | Path | None = None) -> tuple[Policy | None, str, str]:
    """(policy, change id, note): the policy if the file in use is the last version approved
    under change control, else None and why the system may not sign."""
    p = Path(path) if path is not None else policy_path()
    chk = check_in_use(lake, p, POLICY_TARGET)
    if not chk.ok:
        return None, "", f"auto-promotion policy not in force: {chk.detail}"
    change_id = str(history(lake, POLICY_TARGET)["change_id"][-1])
    return load_policy(p), change_id, chk.detail


# ---------------------------------------------------------------------------- storage
def _rows(lake: Lake) -> pl.DataFrame:
    df = lake.read(GXP_LAYER, TABLE)
    return df if df is not None else pl.DataFrame(schema=SCHEMA)


def promotions(lake: Lake) -> pl.DataFrame:
    """The current state of every proposal (its newest row), newest first."""
    df = _rows(lake).sort("at", maintain_order=True)
    cur = df.group_by("promotion_id", maintain_order=True).last()
    return cur.sort("at", descending=True)


def pending(lake: Lake, model_name: str | None = None) -> pl.DataFrame:
    """Proposals waiting for a signature."""
    df = promotions(lake).filter(pl.col("state") == PENDING)
    return df if model_name is None else df.filter(pl.col("model_name") == model_name)


def _append(lake: Lake, row: dict[str, Any]) -> None:
    full = {k: row.get(k) for k in SCHEMA}
    full["at"] = datetime.now(UTC)
    lake.append(
        GXP_LAYER,
        TABLE,
        pl.DataFrame({k: [v] for k, v in full.items()}, schema=SCHEMA),
        configuration=GXP_TABLE_CONFIGURATION,
    )


@contextmanager
def _locked(lake: Lake) -> Iterator[None]:
    with lake.lock("gxp_model_promotions"):
        lake.forget()
        yield


def _num(v: float | None) -> str | None:
    return None if v is None or not math.isfinite(v) else repr(float(v))


def signed_record(row: dict[str, Any], decision: str) -> dict[str, Any]:
    """What a promotion signature signs: the decision and the model version it binds (name,
    version, artifact SHA-256) with the gate's figures."""
    return {
        "decision": decision,
        "promotion_id": row["promotion_id"],
        "model": row["model_name"],
        "version": row["version"],
        "model_sha256": row["model_sha256"],
        "run_id": row["run_id"],
        "gate_metric": row["gate_metric"],
        "challenger_score": _num(row["challenger_score"]),
        "champion_version": row["champion_version"],
        "champion_score": _num(row["champion_score"]),
        "gate_reason": row["gate_reason"],
    }


def _record_id(name: str, version: str) -> str:
    return f"{name}/{version}"


# ---------------------------------------------------------------------------- proposal
@dataclass(frozen=True)
class Outcome:
    """What became of a registered version: ``state`` PENDING or APPROVED (by the system)."""

    promotion_id: str
    state: str
    champion: bool
    note: str
    signature: Signature | None = None


def propose(
    lake: Lake,
    reg: registry.Registration,
    higher_is_better: bool,
    uri: str | None = None,
    policy_file: str | Path | None = None,
    context_id: str | None = None,
) -> Outcome | None:
    """Record the gate's proposal of a registered version (None if the gate did not propose
    it); the system signs and promotes it at once if the approved policy allows, otherwise
    it waits for QA. An older pending proposal of the same model is superseded."""
    if not reg.proposed:
        return None
    trail = AuditTrail(lake)
    sha = registry.model_sha256(reg.name, reg.version, uri)
    pid = "PRM-" + uuid.uuid4().hex[:12]
    row: dict[str, Any] = {
        "promotion_id": pid,
        "model_name": reg.name,
        "version": reg.version,
        "state": PENDING,
        "model_sha256": sha,
        "run_id": reg.run_id,
        "gate_metric": reg.gate_metric,
        "challenger_score": reg.challenger_score,
        "champion_version": reg.champion_version,
        "champion_score": reg.champion_score,
        "gate_reason": reg.promotion_reason,
        "actor": GATE_ACTOR,
    }
    with _locked(lake):
        for old in pending(lake, reg.name).iter_rows(named=True):
            _append(
                lake,
                {
                    **old,
                    "state": SUPERSEDED,
                    "actor": GATE_ACTOR,
                    "signature_id": None,
                    "note": f"superseded by the proposal of v{reg.version} ({pid})",
                },
            )
            trail.record(
                "model_promotion_superseded",
                GATE_ACTOR,
                f"mlflow/{reg.name}",
                _record_id(reg.name, old["version"]),
                "state",
                PENDING,
                SUPERSEDED,
                f"the gate proposed v{reg.version}",
                context_id,
            )
            registry.set_version_tags(
                reg.name, old["version"], {"promotion_state": SUPERSEDED}, uri
            )
        _append(lake, {**row, "note": "proposed by the promotion gate"})
        trail.record(
            "model_promotion_proposed",
            GATE_ACTOR,
            f"mlflow/{reg.name}",
            _record_id(reg.name, reg.version),
            "model_sha256",
            None,
            sha,
            reg.promotion_reason,
            context_id,
        )
    registry.set_version_tags(
        reg.name,
        reg.version,
        {"promotion_id": pid, "model_sha256": sha, "promotion_state": "pending_approval"},
        uri,
    )

    policy, change_id, why_not = approved_policy(lake, policy_file)
    note = why_not
    if policy is not None:
        allowed, note = policy_allows(
            policy,
            reg.name,
            reg.champion_version,
            reg.champion_score,
            reg.challenger_score,
            higher_is_better,
        )
        if allowed:
            label = f"{policy.policy_id} v{policy.version} (change {change_id})"
            sig = sign_as_system(
                lake,
                SYSTEM_SIGNER,
                f"pharma-twin auto-promotion policy {label}",
                "approval",
                RECORD_TYPE,
                _record_id(reg.name, reg.version),
                signed_record(row, "approve"),
                note,
                context_id,
                trail,
            )
            _promote(lake, trail, row, sig, label, note, uri, context_id)
            return Outcome(pid, APPROVED, True, note, sig)
    registry.set_version_tags(
        reg.name, reg.version, {"promotion_note": f"pending QA approval: {note}"}, uri
    )
    return Outcome(pid, PENDING, False, note)


def _promote(
    lake: Lake,
    trail: AuditTrail,
    row: dict[str, Any],
    sig: Signature,
    policy: str | None,
    reason: str,
    uri: str | None,
    context_id: str | None,
) -> None:
    name, version = row["model_name"], row["version"]
    before = registry.champion_version(name, uri)
    with _locked(lake):
        registry.set_champion(name, version, uri)
        _append(
            lake,
            {
                **row,
                "state": APPROVED,
                "actor": sig.user_id,
                "signature_id": sig.signature_id,
                "policy": policy,
                "note": reason,
            },
        )
        trail.record(
            "model_promotion_approved",
            sig.user_id,
            f"mlflow/{name}",
            _record_id(name, version),
            "champion",
            before,
            version,
            reason,
            context_id,
        )
    by = "the system under policy " + policy if policy else f"{sig.printed_name} ({sig.user_id})"
    registry.set_version_tags(
        name,
        version,
        {
            "promotion_state": "approved_by_policy" if policy else "approved",
            "promotion_signature": sig.signature_id,
            "promotion_note": f"approved by {by}: {reason}",
        },
        uri,
    )


# ---------------------------------------------------------------------------- QA decisions
def _open_proposal(lake: Lake, name: str, version: str) -> dict[str, Any]:
    cur = promotions(lake).filter((pl.col("model_name") == name) & (pl.col("version") == version))
    if cur.height == 0:
        raise ValueError(
            f"no promotion of {name} v{version} was proposed (see `pharma-twin model pending`)"
        )
    row = cur.row(0, named=True)
    if row["state"] != PENDING:
        raise ValueError(f"the promotion of {name} v{version} is {row['state']}, not pending")
    return row


def _check_unchanged(row: dict[str, Any], uri: str | None) -> None:
    name, version = row["model_name"], row["version"]
    now = registry.model_sha256(name, version, uri)
    if now != row["model_sha256"]:
        raise ValueError(
            f"the model artifact of {name} v{version} changed since it was proposed "
            f"(SHA-256 {row['model_sha256'][:12]}... now {now[:12]}...): refused"
        )
    champ = registry.champion_version(name, uri)
    if champ != row["champion_version"]:
        raise ValueError(
            f"the champion of {name} is now {'v' + champ if champ else 'none'}, not "
            f"{'v' + row['champion_version'] if row['champion_version'] else 'none'} as when "
            f"v{version} was proposed: the gate's comparison is stale; retrain to re-run it"
        )


def approve(
    lake: Lake,
    user_id: str,
    password: str,
    name: str,
    version: str,
    reason: str,
    uri: str | None = None,
    context_id: str | None = None,
) -> Signature:
    """QA approves a pending proposal: re-authentication, ``model.approve``, signature
    (meaning approval) over the version's hash; then the version becomes champion."""
    version = str(version)
    row = _open_proposal(lake, name, version)
    _check_unchanged(row, uri)
    trail = AuditTrail(lake)
    sig = sign(
        lake,
        user_id,
        password,
        "approval",
        RECORD_TYPE,
        _record_id(name, version),
        signed_record(row, "approve"),
        reason,
        context_id,
        trail,
        PERMISSION,
    )
    _promote(lake, trail, row, sig, None, reason, uri, context_id)
    return sig


def reject(
    lake: Lake,
    user_id: str,
    password: str,
    name: str,
    version: str,
    reason: str,
    uri: str | None = None,
    context_id: str | None = None,
) -> Signature:
    """QA rejects a pending proposal (signed, meaning approval of the decision "reject");
    the champion stays."""
    version = str(version)
    row = _open_proposal(lake, name, version)
    trail = AuditTrail(lake)
    sig = sign(
        lake,
        user_id,
        password,
        "approval",
        RECORD_TYPE,
        _record_id(name, version),
        signed_record(row, "reject"),
        reason,
        context_id,
        trail,
        PERMISSION,
    )
    with _locked(lake):
        _append(
            lake,
            {
                **row,
                "state": REJECTED,
                "actor": user_id,
                "signature_id": sig.signature_id,
                "note": reason,
            },
        )
        trail.record(
            "model_promotion_rejected",
            user_id,
            f"mlflow/{name}",
            _record_id(name, version),
            "state",
            PENDING,
            REJECTED,
            reason,
            context_id,
        )
    registry.set_version_tags(
        name,
        version,
        {
            "promotion_state": REJECTED,
            "promotion_signature": sig.signature_id,
            "promotion_note": f"rejected by {sig.printed_name} ({user_id}): {reason}",
        },
        uri,
    )
    return sig


# ---------------------------------------------------------------------------- verification
@dataclass(frozen=True)
class ChampionCheck:
    model_name: str
    version: str
    ok: bool
    signed_by: str
    problems: tuple[str, ...]

    def line(self) -> str:
        head = f"{self.model_name} v{self.version}"
        if self.ok:
            return f"{head}: champion signed by {self.signed_by}"
        return f"{head}: NOT a signed promotion: " + "; ".join(self.problems)


def verify_version(lake: Lake, name: str, version: str, uri: str | None = None) -> ChampionCheck:
    """Is ``version`` of ``name`` a promotion that was signed (approve) for exactly this
    version and artifact? Recomputes the artifact hash and checks every stored field."""
    version = str(version)
    approved = promotions(lake).filter(
        (pl.col("model_name") == name)
        & (pl.col("version") == version)
        & (pl.col("state") == APPROVED)
    )
    if approved.height == 0:
        return ChampionCheck(
            name,
            version,
            False,
            "",
            ("no approved promotion recorded (the alias was set outside change control)",),
        )
    row = approved.row(0, named=True)
    sigs = [s for s in signatures_for(lake, RECORD_TYPE) if s.signature_id == row["signature_id"]]
    if not sigs:
        return ChampionCheck(
            name,
            version,
            False,
            "",
            (f"signature {row['signature_id']} of the approval is missing",),
        )
    sig = sigs[0]
    problems = list(
        verify_signature(sig, signed_record(row, "approve"), _record_id(name, version)).problems
    )
    now = registry.model_sha256(name, version, uri)
    if now != row["model_sha256"]:
        problems.append(
            f"the model artifact changed after signing (SHA-256 now {now[:12]}..., "
            f"signed {row['model_sha256'][:12]}...)"
        )
    return ChampionCheck(
        name, version, not problems, f"{sig.printed_name} ({sig.user_id})", tuple(problems)
    )


def verify_champions(lake: Lake, uri: str | None = None) -> list[ChampionCheck]:
    """Every model's champion checked with :func:`verify_version` (sorted by name)."""
    models = registry.list_models(uri)
    champs = models.filter(pl.col("is_champion")).sort("name")
    return [
        verify_version(lake, r["name"], r["version"], uri) for r in champs.iter_rows(named=True)
    ]
