"""`pharma-twin model ...`: pending model promotions, QA approval or rejection (signed), the
check that every champion is a signed promotion, and change control of the auto-promotion
policy (docs/models.md, "Signed promotion")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli import (
    LakeOpt,
    ReasonOpt,
    UserOpt,
    ask_password,
    console,
    err,
    existing_lake,
    fail,
    normal_user_id,
)

model_app = typer.Typer(
    help="Model promotions: pending, approve/reject (QA, signed), verify, auto-promotion policy.",
    no_args_is_help=True,
)


def _uri() -> str:
    from pharma_assets.ml import registry

    return registry.tracking_uri()


@model_app.command("pending")
def model_pending(
    all_states: Annotated[
        bool, typer.Option("--all", help="Every proposal, whatever its state.")
    ] = False,
    lake: LakeOpt = None,
) -> None:
    """Promotions the gate proposed that wait for a QA signature (--all: every proposal)."""
    from .promotions import pending, promotions

    lk = existing_lake(lake)
    df = promotions(lk) if all_states else pending(lk)
    if df.height == 0:
        console.print("no pending promotion" if not all_states else "no promotion proposed yet")
        return
    for r in df.iter_rows(named=True):
        score = "" if r["challenger_score"] is None else f" {r['challenger_score']:.4g}"
        champ = f"v{r['champion_version']}" if r["champion_version"] else "none"
        console.print(
            f"{r['promotion_id']} {r['model_name']} v{r['version']}: {r['state']} "
            f"({r['gate_metric']}{score}; champion when proposed: {champ}; last by "
            f"{r['actor']}, {r['at']:%Y-%m-%d %H:%M:%S} UTC)\n  {r['note'] or ''}",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )


def _decide(
    approve: bool, name: str, version: str, user: str, reason: str, lake: str | None
) -> None:
    from . import promotions

    lk, user = existing_lake(lake), normal_user_id(user)
    fn = promotions.approve if approve else promotions.reject
    try:
        sig = fn(lk, user, ask_password("Password (signature)"), name, version, reason, _uri())
    except Exception as e:
        fail(e)
    what = "approved: now champion" if approve else "rejected: the champion stays"
    console.print(
        f"{name} v{version} {what}. {sig.manifestation()} ({sig.signature_id})",
        soft_wrap=True,
        highlight=False,
    )


@model_app.command("approve")
def model_approve(
    name: str, version: str, user: UserOpt, reason: ReasonOpt, lake: LakeOpt = None
) -> None:
    """Approve a pending promotion (QA: password again, signature bound to the version's
    artifact SHA-256); the version becomes champion."""
    _decide(True, name, version, user, reason, lake)


@model_app.command("reject")
def model_reject(
    name: str, version: str, user: UserOpt, reason: ReasonOpt, lake: LakeOpt = None
) -> None:
    """Reject a pending promotion (QA, signed); the champion stays."""
    _decide(False, name, version, user, reason, lake)


@model_app.command("verify")
def model_verify(lake: LakeOpt = None) -> None:
    """Is every champion a signed promotion of exactly that version and artifact? Exit 1 if
    not."""
    from .promotions import verify_champions

    checks = verify_champions(existing_lake(lake), _uri())
    if not checks:
        console.print("no champion registered")
    for c in checks:
        (console if c.ok else err).print(
            ("[green]" if c.ok else "[red]") + c.line(), soft_wrap=True, highlight=False
        )
    if any(not c.ok for c in checks):
        raise typer.Exit(1)


@model_app.command("policy-change")
def model_policy_change(
    new_file: Path, user: UserOpt, reason: ReasonOpt, lake: LakeOpt = None
) -> None:
    """Put NEW_FILE in force as the auto-promotion policy under change control (validated,
    signed, audited); the first change records the approved baseline."""
    from .changecontrol import apply_change
    from .promotions import POLICY_TARGET, policy_path

    p = policy_path()
    lk, user = existing_lake(lake), normal_user_id(user)
    try:
        row = apply_change(
            lk,
            p,
            new_file.read_text(),
            user,
            ask_password("Password (signature)"),
            reason,
            POLICY_TARGET,
        )
    except Exception as e:
        fail(e)
    console.print(f"{row['change_id']}: {p} {row['old_sha256'] or '-'} -> {row['new_sha256']}")


@model_app.command("policy-check")
def model_policy_check(lake: LakeOpt = None) -> None:
    """Is the auto-promotion policy in use the last approved version? Exit 1 if not (the
    system then signs nothing: every proposal waits for QA)."""
    from .promotions import approved_policy

    policy, _, note = approved_policy(existing_lake(lake))
    if policy is None:
        err.print(f"[red]{note}", soft_wrap=True)
        raise typer.Exit(1)
    console.print(
        f"[green]policy {policy.policy_id} v{policy.version} in force ({note})", soft_wrap=True
    )
