"""Signed model promotion (issue 14, item 4): the gate proposes, QA signs (or the system
under the change-controlled auto-promotion policy), the signature binds the version's
artifact hash, and everything is in the audit chain. Real MLflow SQLite store, real lake."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from pharma_assets.cli import app
from pharma_assets.compliance import promotions
from pharma_assets.compliance.audit import AuditTrail, verify
from pharma_assets.compliance.changecontrol import apply_change
from pharma_assets.compliance.signatures import signatures_for, verify_signature
from pharma_assets.compliance.users import AuthError, PermissionDeniedError
from pharma_assets.lake.storage import Lake
from pharma_assets.ml import registry

from .conftest import add_users


class Const:
    def __init__(self, score: float) -> None:
        self.score = score


def _trained(score: float, name: str = "pharma_test_model") -> registry.TrainedModel:
    return registry.TrainedModel(
        name=name,
        model=Const(score),
        params={},
        features=["f1"],
        data_versions={},
        metrics={"r2": score, "mae": 1.0 - score, "baseline_mae": 5.0},
        gate_metric="r2",
        higher_is_better=True,
        evaluation_set="holdout: test",
        n_eval=5,
        minimum=registry.Minimum("regressor"),
    )


@pytest.fixture
def env(empty_lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("PHARMA_MLFLOW_URI", uri)
    policy = tmp_path / "policy.yaml"
    policy.write_text(promotions.DEFAULT_POLICY.read_text())
    monkeypatch.setenv(promotions.POLICY_ENV, str(policy))
    return empty_lake, add_users(empty_lake), uri, policy


def _propose(lake: Lake, uri: str, score: float, name: str = "pharma_test_model"):
    reg = registry.register(_trained(score, name), lambda m: m.score, uri=uri)
    return reg, promotions.propose(lake, reg, True, uri)


def _approve_policy(lake: Lake, pw: dict[str, str], policy: Path) -> str:
    row = apply_change(
        lake,
        policy,
        policy.read_text(),
        "qa.lead",
        pw["qa.lead"],
        "baseline of the auto-promotion policy",
        promotions.POLICY_TARGET,
    )
    return str(row["change_id"])


def test_gate_proposes_only_a_qa_signature_promotes(env) -> None:
    lake, pw, uri, _ = env
    reg, out = _propose(lake, uri, 0.8)
    # no approved policy: the proposal waits, nothing is champion, the registry says so
    assert out is not None and out.state == promotions.PENDING and not out.champion
    assert "not in force" in out.note
    assert registry.load_champion(reg.name, uri) is None
    assert promotions.pending(lake)["version"].to_list() == ["1"]
    assert registry.version_info(reg.name, "1", uri)["tags"]["promotion_state"] == (
        "pending_approval"
    )
    # wrong roles are refused (and audited), as is a wrong password
    for uid in ("op.jones", "pe.smith", "mx.brown"):
        with pytest.raises(PermissionDeniedError, match=r"model\.approve.*\['qa'\]"):
            promotions.approve(lake, uid, pw[uid], reg.name, "1", "looks good", uri)
    with pytest.raises(PermissionDeniedError):
        promotions.approve(lake, "admin", pw["admin"], reg.name, "1", "looks good", uri)
    with pytest.raises(AuthError):
        promotions.approve(lake, "qa.lead", "wrong-password-123", reg.name, "1", "ok", uri)
    assert registry.load_champion(reg.name, uri) is None
    refused = AuditTrail(lake).read(action="signature_refused")
    assert set(refused["actor"]) == {"op.jones", "pe.smith", "mx.brown", "admin"}

    sig = promotions.approve(
        lake, "qa.lead", pw["qa.lead"], reg.name, "1", "validated on the held-out batches", uri
    )
    assert sig.meaning == "approval" and sig.role == "qa" and sig.record_id == f"{reg.name}/1"
    assert registry.load_champion(reg.name, uri)[1] == "1"  # type: ignore[index]
    assert promotions.pending(lake).height == 0
    [check] = promotions.verify_champions(lake, uri)
    assert check.ok and "Quinn Assurance (qa.lead)" in check.signed_by
    # proposal and approval are in the chain, which verifies
    trail = AuditTrail(lake)
    prop = trail.read(action="model_promotion_proposed").row(0, named=True)
    assert prop["record_id"] == f"{reg.name}/1" and prop["actor"] == promotions.GATE_ACTOR
    appr = trail.read(action="model_promotion_approved").row(0, named=True)
    assert (appr["actor"], appr["old_value"], appr["new_value"]) == ("qa.lead", None, "1")
    assert verify(lake).ok
    # a decided proposal cannot be signed again
    with pytest.raises(ValueError, match="is approved, not pending"):
        promotions.approve(lake, "qa.lead", pw["qa.lead"], reg.name, "1", "again", uri)


def test_a_signature_cannot_be_moved_to_another_version(env) -> None:
    lake, pw, uri, _ = env
    reg1, _ = _propose(lake, uri, 0.8)
    sig1 = promotions.approve(lake, "qa.lead", pw["qa.lead"], reg1.name, "1", "ok", uri)
    _, out2 = _propose(lake, uri, 0.85)
    assert out2 is not None and out2.state == promotions.PENDING

    # v1's signature does not verify against v2's record (hash and record id differ)
    rows = promotions.promotions(lake)
    row2 = rows.filter(pl.col("version") == "2").row(0, named=True)
    chk = verify_signature(sig1, promotions.signed_record(row2, "approve"), f"{reg1.name}/2")
    assert not chk.ok and len(chk.problems) == 2
    assert "record hash mismatch" in chk.problems[0]
    # moving the alias in MLflow by hand (outside change control) is detected
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri).set_registered_model_alias(reg1.name, "champion", "2")
    [check] = promotions.verify_champions(lake, uri)
    assert not check.ok and check.version == "2" and "outside change control" in check.line()
    r = CliRunner().invoke(app, ["model", "verify", "--lake", str(lake.root)])
    assert r.exit_code == 1 and "NOT a signed promotion" in r.output
    # and approving v2 now is refused: the champion is not the one the gate compared with
    with pytest.raises(ValueError, match="comparison is stale"):
        promotions.approve(lake, "qa.lead", pw["qa.lead"], reg1.name, "2", "ok", uri)
    MlflowClient(tracking_uri=uri).set_registered_model_alias(reg1.name, "champion", "1")
    assert promotions.verify_champions(lake, uri)[0].ok

    # the artifact of the signed version replaced after signing: no longer verifies
    art = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    pkl = next(p for p in art.rglob("model.pkl") if reg1.run_id in str(p))
    pkl.write_bytes(pkl.read_bytes() + b"\0")
    check = promotions.verify_version(lake, reg1.name, "1", uri)
    assert not check.ok and "artifact changed after signing" in check.line()


def test_auto_promotion_policy_signs_as_the_system_and_says_so(env) -> None:
    lake, pw, uri, policy = env
    change_id = _approve_policy(lake, pw, policy)
    name = "pharma_quality_titer_day7"
    _, out1 = _propose(lake, uri, 0.80, name)
    assert out1 is not None and out1.state == promotions.APPROVED and out1.champion
    sig = out1.signature
    assert sig is not None and sig.user_id == promotions.SYSTEM_SIGNER and sig.role == "system"
    assert "AUTO-PROMO v1" in sig.printed_name and change_id in sig.printed_name
    assert "first version" in sig.reason
    assert registry.load_champion(name, uri)[1] == "1"  # type: ignore[index]
    row = promotions.promotions(lake).row(0, named=True)
    assert row["actor"] == promotions.SYSTEM_SIGNER and change_id in row["policy"]
    tags = registry.version_info(name, "1", uri)["tags"]
    assert tags["promotion_state"] == "approved_by_policy" and tags["promoted"] == "True"
    # improvement below the policy's 0.02: waits for QA; at or above: the system signs
    _, out2 = _propose(lake, uri, 0.81, name)
    assert out2 is not None and out2.state == promotions.PENDING and "< 0.02" in out2.note
    _, out3 = _propose(lake, uri, 0.85, name)
    assert out3 is not None and out3.state == promotions.APPROVED
    assert registry.load_champion(name, uri)[1] == "3"  # type: ignore[index]
    states = dict(promotions.promotions(lake).select("version", "state").iter_rows())
    assert states == {"1": "approved", "2": "superseded", "3": "approved"}
    # other models: the policy never replaces a champion by itself
    _propose(lake, uri, 0.7, "pharma_pdm_x")
    _, other = _propose(lake, uri, 0.9, "pharma_pdm_x")
    assert other is not None and other.state == promotions.PENDING
    assert "replacing a champion needs a QA signature" in other.note
    assert all(c.ok for c in promotions.verify_champions(lake, uri))
    sigs = signatures_for(lake, promotions.RECORD_TYPE)
    assert {s.user_id for s in sigs} == {promotions.SYSTEM_SIGNER}
    assert verify(lake).ok

    # the policy edited outside change control is not in force: the system signs nothing
    policy.write_text(policy.read_text().replace("0.02", "0.0"))
    _, out4 = _propose(lake, uri, 0.86, name)
    assert out4 is not None and out4.state == promotions.PENDING
    assert "edited outside change control" in out4.note


def test_invalid_policy_is_refused_by_change_control(env) -> None:
    lake, pw, _, policy = env
    with pytest.raises(ValueError, match=r"min_gate_improvement must be a number >= 0"):
        apply_change(
            lake,
            policy,
            policy.read_text().replace("0.02", "-1"),
            "qa.lead",
            pw["qa.lead"],
            "bad",
            promotions.POLICY_TARGET,
        )
    with pytest.raises(PermissionDeniedError, match=r"spec\.change"):
        apply_change(
            lake,
            policy,
            policy.read_text(),
            "op.jones",
            pw["op.jones"],
            "x",
            promotions.POLICY_TARGET,
        )


def test_reject_keeps_the_champion_and_cli_flow(env) -> None:
    lake, pw, uri, _ = env
    runner = CliRunner()
    reg, _ = _propose(lake, uri, 0.8)
    r = runner.invoke(app, ["model", "pending", "--lake", str(lake.root)])
    assert r.exit_code == 0 and reg.name in r.output
    r = runner.invoke(
        app,
        [
            "model",
            "approve",
            reg.name,
            "1",
            "--user",
            "OP.Jones",
            "--reason",
            "x",
            "--lake",
            str(lake.root),
        ],
        input=pw["op.jones"] + "\n",
    )
    assert r.exit_code == 1 and "lacks permission 'model.approve'" in r.output
    r = runner.invoke(
        app,
        [
            "model",
            "approve",
            reg.name,
            "1",
            "--user",
            "qa.lead",
            "--reason",
            "validated",
            "--lake",
            str(lake.root),
        ],
        input=pw["qa.lead"] + "\n",
    )
    assert r.exit_code == 0, r.output
    assert "approved: now champion" in r.output and "Quinn Assurance" in r.output
    _propose(lake, uri, 0.9)
    r = runner.invoke(
        app,
        [
            "model",
            "reject",
            reg.name,
            "2",
            "--user",
            "qa.lead",
            "--reason",
            "not validated",
            "--lake",
            str(lake.root),
        ],
        input=pw["qa.lead"] + "\n",
    )
    assert r.exit_code == 0, r.output
    assert registry.load_champion(reg.name, uri)[1] == "1"  # type: ignore[index]
    assert registry.version_info(reg.name, "2", uri)["tags"]["promotion_state"] == "rejected"
    r = runner.invoke(app, ["model", "verify", "--lake", str(lake.root)])
    assert r.exit_code == 0 and "champion signed by Quinn Assurance" in r.output
    r = runner.invoke(app, ["audit", "verify", "--lake", str(lake.root)])
    assert r.exit_code == 0, r.output
    shown = AuditTrail(lake).read()
    assert {
        "model_promotion_proposed",
        "model_promotion_approved",
        "model_promotion_rejected",
    } <= set(shown["action"])
    r = runner.invoke(app, ["model", "policy-check", "--lake", str(lake.root)])
    assert r.exit_code == 1 and "no approved version of promotion_policy" in r.output
