"""The Models page lists the promotions waiting for a signature; QA approves or rejects them
through the e-signature dialog (real lake, real MLflow SQLite store, real logins)."""

from __future__ import annotations

from pharma_assets.compliance import promotions
from pharma_assets.compliance.audit import AuditTrail
from pharma_assets.ml import registry

from .conftest import PASSWORDS


def _trained(r2: float, name: str) -> registry.TrainedModel:
    return registry.TrainedModel(
        name=name,
        model={"r2": r2},
        params={},
        features=["f"],
        data_versions={},
        metrics={"r2": r2, "mae": 1.0, "baseline_mae": 1.2, "baseline_r2": -0.01},
        gate_metric="r2",
        higher_is_better=True,
        evaluation_set="holdout: test",
        n_eval=12,
        minimum=registry.Minimum("regressor"),
    )


def _sign(at, key: str, user: str, password: str, reason: str):  # type: ignore[no-untyped-def]
    at.button(key=f"open_{key}").click().run()
    at.text_input(key=f"sig_user_{key}").input(user)
    at.text_input(key=f"sig_pw_{key}").input(password)
    at.text_input(key=f"sig_reason_{key}").input(reason)
    return next(b for b in at.button if b.label == "Sign").click().run()


def test_qa_approves_and_rejects_pending_promotions_on_the_models_page(
    app, lake_copy, tmp_path, monkeypatch
):
    uri = f"sqlite:///{tmp_path / 'reg' / 'mlflow.db'}"
    monkeypatch.setenv("PHARMA_MLFLOW_URI", uri)
    name = "pharma_quality_final_titer_g_l_day7"
    reg = registry.register(_trained(0.6, name), None, uri=uri)
    out = promotions.propose(lake_copy, reg, True, uri)
    assert out is not None and out.state == promotions.PENDING  # no approved policy here

    # a viewer sees the proposal but cannot sign it
    at = app(lake_copy.root, "models", user="view.only")
    info = [i.value for i in at.info if name in i.value]
    assert len(info) == 1 and f"**{name}** v1 proposed" in info[0] and "no champion" in info[0]
    assert not [b for b in at.button if (b.key or "").startswith("open_prm_")]
    assert any("wait for QA" in c.value for c in at.caption)

    # QA approves with the signature dialog: wrong password refused, then signed
    at = app(lake_copy.root, "models", user="qa.lead")
    key = f"prm_ok_{name}_1"
    at = _sign(at, key, "qa.lead", "not-the-password", "validated on held-out batches")
    assert at.error and registry.load_champion(name, uri) is None
    at.text_input(key=f"sig_pw_{key}").input(PASSWORDS["qa.lead"])
    at = next(b for b in at.button if b.label == "Sign").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert f"{name} v1 approved: now champion" in [s.value for s in at.success]
    assert registry.load_champion(name, uri)[1] == "1"  # type: ignore[index]
    [check] = promotions.verify_champions(lake_copy, uri)
    assert check.ok and "Quinn Assurance (qa.lead)" in check.signed_by
    assert "No promotion waits for a signature." in [c.value for c in at.caption]

    # a second proposal, rejected: the champion stays
    reg2 = registry.register(_trained(0.7, name), lambda _m: 0.6, uri=uri)
    promotions.propose(lake_copy, reg2, True, uri)
    at = app(lake_copy.root, "models", user="qa.lead")
    at = _sign(at, f"prm_no_{name}_2", "qa.lead", PASSWORDS["qa.lead"], "not validated yet")
    assert f"{name} v2 rejected: the champion stays" in [s.value for s in at.success]
    assert registry.load_champion(name, uri)[1] == "1"  # type: ignore[index]
    assert any("v2 rejected (champion stays v1)" in w.value for w in at.warning)
    actions = set(AuditTrail(lake_copy).read()["action"])
    assert {
        "model_promotion_proposed",
        "model_promotion_approved",
        "model_promotion_rejected",
    } <= actions
