"""GxP commands of `pharma-twin`: users, audit, deviations, signatures, release, EBR, backup,
change control. Registered on the main app by ``register(app)``.

Passwords are always prompted (never command-line arguments: they would land in shell
history); scripts can pipe them on stdin.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from pharma_assets.cli_support import check_lake
from pharma_assets.lake.storage import Lake, lake_uri_from_env

console = Console()
err = Console(stderr=True)

users_app = typer.Typer(help="Manage user accounts (admin).", no_args_is_help=True)
audit_app = typer.Typer(help="Show and verify the GxP audit trail.", no_args_is_help=True)
deviation_app = typer.Typer(help="Deviations and CAPA workflow.", no_args_is_help=True)
spec_app = typer.Typer(help="Change control of the CPP spec and recipes.", no_args_is_help=True)

LakeOpt = Annotated[
    str | None, typer.Option("--lake", help="Lake root (default: $PHARMA_LAKE_URI or ./lakehouse).")
]
UserOpt = Annotated[
    str, typer.Option("--user", "-u", help="Your user ID (you will be asked for your password).")
]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why (goes into the audit trail).")]


def _lake(lake: str | None) -> Lake:
    return Lake.from_env(lake)


def existing_lake(lake: str | None) -> Lake:
    """The lake, refused (one line naming the path, exit 2) if it is a local folder that
    does not exist: a mistyped --lake must not read as an empty lake or create a new one."""
    uri = lake or lake_uri_from_env()
    check_lake(uri)
    return _lake(uri)


def normal_user_id(user_id: str) -> str:
    """User IDs are case-insensitive: stored and looked up in lower case (``qa.lead``)."""
    return user_id.strip().lower()


def _bid(batch_id: str) -> str:
    """Batch and unit IDs are upper case (``BR01-B0001``); ``br01-b0001`` means the same."""
    return batch_id.strip().upper()


def ask_password(prompt: str = "Password") -> str:
    import sys

    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    return getpass.getpass(f"{prompt}: ")


def fail(e: Exception) -> NoReturn:
    """Hand the failure to the app's error handler: one line naming it, exit 1 (the
    traceback with --debug)."""
    raise e


def _admin_check(lk: Lake, admin: str) -> None:
    from .users import authenticate

    authenticate(lk, admin, ask_password(f"Password of {admin}"), purpose="admin_reauth")


# ---------------------------------------------------------------------------- users
@users_app.command("add")
def users_add(
    user_id: str,
    name: Annotated[str, typer.Option(help="Full printed name (shown on signatures).")],
    role: Annotated[str, typer.Option(help="operator, process_engineer, qa, maintenance, admin")],
    admin: Annotated[
        str | None, typer.Option(help="Your admin ID (omit to bootstrap the first admin account).")
    ] = None,
    reason: ReasonOpt = "new account",
    lake: LakeOpt = None,
) -> None:
    """Create an account; asks for the admin's password, then the new user's initial one."""
    from .users import create_user

    lk = existing_lake(lake)
    user_id, admin = normal_user_id(user_id), (normal_user_id(admin) if admin else None)
    try:
        if admin:
            _admin_check(lk, admin)
        pw = ask_password(f"Initial password for {user_id}")
        actor = admin or f"system:{getpass.getuser()}"
        u = create_user(lk, user_id, name, role, pw, actor, reason, bootstrap=admin is None)
    except Exception as e:
        fail(e)
    console.print(f"created {u.user_id} ({u.role})")


@users_app.command("list")
def users_list(lake: LakeOpt = None) -> None:
    """Accounts with role, state and password age."""
    from .users import list_users

    df = list_users(existing_lake(lake))
    t = Table("user", "name", "role", "active", "locked", "failed", "password set", "updated")
    for r in df.iter_rows(named=True):
        t.add_row(
            r["user_id"],
            r["full_name"],
            r["role"],
            str(r["active"]),
            str(r["locked"]),
            str(r["failed_attempts"]),
            f"{r['password_set_at']:%Y-%m-%d}",
            f"{r['updated_at']:%Y-%m-%d %H:%M} by {r['updated_by']}",
        )
    console.print(t)


@users_app.command("disable")
def users_disable(
    user_id: str, admin: Annotated[str, typer.Option()], reason: ReasonOpt, lake: LakeOpt = None
) -> None:
    """Disable an account for good (its ID is never reused)."""
    from .users import disable_user

    lk = existing_lake(lake)
    user_id, admin = normal_user_id(user_id), normal_user_id(admin)
    try:
        _admin_check(lk, admin)
        disable_user(lk, user_id, admin, reason)
    except Exception as e:
        fail(e)
    console.print(f"disabled {user_id}")


@users_app.command("reset-password")
def users_reset(
    user_id: str, admin: Annotated[str, typer.Option()], reason: ReasonOpt, lake: LakeOpt = None
) -> None:
    """Set a temporary password and unlock; the user must change it at next login."""
    from .users import reset_password

    lk = existing_lake(lake)
    user_id, admin = normal_user_id(user_id), normal_user_id(admin)
    try:
        _admin_check(lk, admin)
        reset_password(
            lk, user_id, ask_password(f"Temporary password for {user_id}"), admin, reason
        )
    except Exception as e:
        fail(e)
    console.print(f"password of {user_id} reset; account unlocked")


@users_app.command("change-password")
def users_change(user_id: str, lake: LakeOpt = None) -> None:
    """Change your own password (old, then new)."""
    from .users import change_password

    lk = existing_lake(lake)
    user_id = normal_user_id(user_id)
    try:
        change_password(lk, user_id, ask_password("Current password"), ask_password("New password"))
    except Exception as e:
        fail(e)
    console.print("password changed")


# ---------------------------------------------------------------------------- audit
@audit_app.command("verify")
def audit_verify(lake: LakeOpt = None) -> None:
    """Verify the chain (HMAC of every entry, links, sequence, anchored head) and report every
    retirement of the anchor; exit 1 on failure (never a crash: damage is named)."""
    from .audit import verify

    res = verify(_lake(lake))
    if res.ok and res.entries == 0 and res.anchor_seq is None:
        existing_lake(lake)  # a mistyped path is an error, not an empty trail that verifies
    if res.ok:
        console.print(f"[green]{res.summary()}", soft_wrap=True)
    else:
        err.print(f"[red]{res.summary()}", soft_wrap=True)
        raise typer.Exit(1)


@audit_app.command("show")
def audit_show(
    limit: Annotated[int, typer.Option(help="Newest N entries.")] = 30,
    action: Annotated[str | None, typer.Option(help="Only this action.")] = None,
    record: Annotated[str | None, typer.Option(help="Only this record ID.")] = None,
    lake: LakeOpt = None,
) -> None:
    """Print audit entries (newest last)."""
    from .audit import AuditTrail

    df = AuditTrail(existing_lake(lake)).read(
        action=action, record_ids=[record] if record else None, limit=limit
    )
    t = Table("seq", "UTC", "actor", "action", "table", "record", "field", "old", "new", "reason")
    for r in df.iter_rows(named=True):
        t.add_row(
            str(r["seq"]),
            f"{r['ts_utc']:%Y-%m-%d %H:%M:%S}",
            r["actor"],
            r["action"],
            r["table_name"],
            r["record_id"],
            r["field"] or "",
            (r["old_value"] or "")[:40],
            (r["new_value"] or "")[:40],
            (r["reason"] or "")[:40],
        )
    console.print(t)


@audit_app.command("retire-anchor")
def audit_retire_anchor(
    reason: ReasonOpt,
    admin: Annotated[str, typer.Option(help="Your admin ID (you sign the retirement).")],
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: the trail is deleted on purpose.")
    ] = False,
    lake: LakeOpt = None,
) -> None:
    """Retire the anchor of a lake's audit trail that is about to be deleted ON PURPOSE (e.g.
    the demo lake `make clean` removes); without this a new trail at the same place is refused
    as truncated. A GxP action: the admin re-enters the password and signs; the retirement is
    written to the trail it retires and to the anchor log, and `audit verify` reports it from
    then on. Never use it on a GxP lake you keep."""
    from .audit import retire_trail

    if not yes:
        err.print("[red]refusing without --yes: this retires the audit trail's anchored head")
        raise typer.Exit(2)
    lk = existing_lake(lake)
    try:
        r = retire_trail(lk, admin, ask_password(f"Password of {admin} (signature)"), reason)
    except Exception as e:
        fail(e)
    console.print(f"{lk.uri('gxp', 'audit_trail')}: {r.describe()}", soft_wrap=True)


# ---------------------------------------------------------------------------- deviations
@deviation_app.command("list")
def dev_list(
    batch: Annotated[str | None, typer.Option()] = None,
    state: Annotated[str | None, typer.Option()] = None,
    lake: LakeOpt = None,
) -> None:
    """Deviations (current state)."""
    from .deviations import list_deviations

    df = list_deviations(existing_lake(lake), _bid(batch) if batch else None, state)
    t = Table("id", "batch", "severity", "state", "source", "title")
    for r in df.iter_rows(named=True):
        t.add_row(
            r["deviation_id"],
            r["batch_id"] or "",
            r["severity"],
            r["state"],
            r["source"],
            r["title"],
        )
    console.print(t)


@deviation_app.command("open")
def dev_open(
    title: str,
    user: UserOpt,
    reason: ReasonOpt,
    severity: Annotated[str, typer.Option()] = "minor",
    description: Annotated[str, typer.Option()] = "",
    batch: Annotated[str | None, typer.Option()] = None,
    lake: LakeOpt = None,
) -> None:
    """Open a deviation by hand."""
    from .deviations import open_deviation
    from .users import authenticate

    lk = existing_lake(lake)
    user, batch = normal_user_id(user), (_bid(batch) if batch else None)
    try:
        authenticate(lk, user, ask_password())
        d = open_deviation(lk, user, title, description or title, severity, reason, batch)
    except Exception as e:
        fail(e)
    console.print(f"opened {d.deviation_id}")


@deviation_app.command("auto")
def dev_auto(lake: LakeOpt = None) -> None:
    """Open deviations for major/critical excursions and contamination alarms."""
    from .deviations import auto_open

    console.print(f"opened {len(auto_open(existing_lake(lake)))} deviations")


@deviation_app.command("advance")
def dev_advance(
    deviation_id: str,
    user: UserOpt,
    reason: ReasonOpt,
    investigation: Annotated[str | None, typer.Option()] = None,
    root_cause: Annotated[str | None, typer.Option()] = None,
    capa: Annotated[str | None, typer.Option()] = None,
    lake: LakeOpt = None,
) -> None:
    """open -> investigation -> capa."""
    from .deviations import advance
    from .users import authenticate

    lk = existing_lake(lake)
    user = normal_user_id(user)
    try:
        authenticate(lk, user, ask_password())
        d = advance(lk, deviation_id, user, reason, investigation, root_cause, capa)
    except Exception as e:
        fail(e)
    console.print(f"{d.deviation_id} is now {d.state}")


@deviation_app.command("close")
def dev_close(deviation_id: str, user: UserOpt, reason: ReasonOpt, lake: LakeOpt = None) -> None:
    """Close (QA; electronic signature, meaning approval)."""
    from .deviations import close

    lk, user = existing_lake(lake), normal_user_id(user)
    try:
        d = close(lk, deviation_id, user, ask_password("Password (signature)"), reason)
    except Exception as e:
        fail(e)
    console.print(f"{d.deviation_id} closed, signature {d.signature_id}")


# ---------------------------------------------------------------------------- spec
@spec_app.command("change")
def spec_change(
    new_file: Path,
    user: UserOpt,
    reason: ReasonOpt,
    target: Annotated[str, typer.Option(help="cpp_spec or recipes")] = "cpp_spec",
    path: Annotated[
        Path | None,
        typer.Option(help="File in use (default: $PHARMA_CPP_SPEC or the built-in spec)."),
    ] = None,
    lake: LakeOpt = None,
) -> None:
    """Replace the spec in use with NEW_FILE under change control (signed, audited)."""
    from .changecontrol import apply_change

    p = path or _default_path(target)
    lk, user = existing_lake(lake), normal_user_id(user)
    try:
        row = apply_change(
            lk, p, new_file.read_text(), user, ask_password("Password (signature)"), reason, target
        )
    except Exception as e:
        fail(e)
    console.print(f"{row['change_id']}: {p} {row['old_sha256'] or '-'} -> {row['new_sha256']}")


@spec_app.command("draft")
def spec_draft(
    landing: Annotated[Path, typer.Option(help="Landing zone with the imported exports.")],
    out: Annotated[Path, typer.Option(help="Spec YAML to write (refused if it exists).")],
    unit_class: Annotated[
        str, typer.Option(help="Unit class: a built-in name or a unit class YAML path.")
    ] = "bioreactor",
    product: Annotated[str | None, typer.Option(help="Product name.")] = None,
) -> None:
    """Draft a product spec from what the landing zone holds (every tag with its unit and
    physical range, every analyte): mark the CPPs and limits, then `spec change` it."""
    import yaml

    from ..cli_support import CliError, existing_dir
    from ..lake.specs import CppSpec
    from ..source_import import draft_spec

    existing_dir(landing, "landing zone")
    if out.exists():
        raise CliError(f"{out} exists; choose another --out (a draft never overwrites a spec)")
    data = draft_spec(landing, unit_class, product)
    if not data["tags"]:
        raise CliError(f"no telemetry in {landing}/telemetry: import the historian export first")
    CppSpec.model_validate(data)  # what is written loads
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    typer.echo(
        f"wrote {out}: {len(data['tags'])} tags, "
        f"{len(data['lab']['release'])} release assays, no CPP yet (edit, then "
        "`pharma-twin spec change`)"
    )


@spec_app.command("check")
def spec_check(
    target: Annotated[str, typer.Option()] = "cpp_spec",
    path: Annotated[Path | None, typer.Option()] = None,
    lake: LakeOpt = None,
) -> None:
    """Is the spec in use the last approved version? Exit 1 if not."""
    from .changecontrol import check_in_use

    r = check_in_use(existing_lake(lake), path or _default_path(target), target)
    (console if r.ok else err).print(("[green]" if r.ok else "[red]") + r.detail)
    if not r.ok:
        raise typer.Exit(1)


def _default_path(target: str) -> Path:
    if target == "cpp_spec":
        from pharma_assets.lake.specs import DEFAULT_SPEC

        return Path(os.environ.get("PHARMA_CPP_SPEC") or DEFAULT_SPEC)
    from pharma_assets.twin import config

    return Path(config.__file__).parent / "config" / "recipes_default.yaml"


# ---------------------------------------------------------------------------- amendments
amendment_app = typer.Typer(
    help="Deliveries that change accepted data: list, apply (signed).", no_args_is_help=True
)


@amendment_app.command("list")
def amendment_list(
    state: Annotated[str | None, typer.Option(help="held or applied (default: all).")] = None,
    lake: LakeOpt = None,
) -> None:
    """Amendments detected at ingestion (held until applied), with the differing keys."""
    from pharma_assets.lake.amendments import list_amendments

    df = list_amendments(_lake(lake), state)
    for r in df.iter_rows(named=True):
        when = f"{r['detected_at']:%Y-%m-%d %H:%M:%S}"
        console.print(
            f"{r['amendment_id']} {r['state']} {r['kind']} {r['source_file']}: "
            f"{r['keys_changed']} keys changed, detected {when} UTC\n  {r['detail']}",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
    if df.height == 0:
        console.print("no amendments")


@amendment_app.command("apply")
def amendment_apply(
    amendment_id: str,
    user: UserOpt,
    reason: ReasonOpt,
    landing: Annotated[
        Path | None, typer.Option(help="Landing zone (default: $PHARMA_LANDING_DIR or ./landing).")
    ] = None,
    lake: LakeOpt = None,
) -> None:
    """Apply a held amendment: supersede the accepted values (old rows stay in the Delta
    history and the audit trail); electronic signature, meaning approval (QA)."""
    from pharma_assets.compliance.amendments import apply

    land = landing or Path(os.environ.get("PHARMA_LANDING_DIR", "landing"))
    try:
        res = apply(
            _lake(lake),
            land,
            amendment_id,
            user,
            ask_password("Password (signature)"),
            reason,
            os.environ.get("PHARMA_CPP_SPEC") or None,
        )
    except Exception as e:
        fail(e)
    console.print(
        f"{res.amendment_id} applied: {res.bronze_rows_replaced} bronze rows superseded "
        f"in {', '.join(res.files_rederived)}; signature {res.signature_id}"
    )


# ---------------------------------------------------------------------------- top level
def sign(
    batch_id: str,
    user: UserOpt,
    reason: ReasonOpt,
    meaning: Annotated[
        str, typer.Option(help="review, approval, responsibility, authorship")
    ] = "review",
    lake: LakeOpt = None,
) -> None:
    """Sign a batch record (default meaning: review) after re-entering your password."""
    from .release import batch_record
    from .signatures import sign as do_sign

    lk = existing_lake(lake)
    batch_id, user = _bid(batch_id), normal_user_id(user)
    try:
        s = do_sign(
            lk,
            user,
            ask_password("Password (signature)"),
            meaning,
            "batch_record",
            batch_id,
            batch_record(lk, batch_id),
            reason,
        )
    except Exception as e:
        fail(e)
    console.print(s.manifestation())


def release(
    batch_id: str,
    user: UserOpt,
    reason: ReasonOpt,
    decision: Annotated[
        str,
        typer.Option(help="released or rejected (required: no default, QA states the decision)"),
    ],
    lake: LakeOpt = None,
) -> None:
    """QA release or rejection of a batch, with electronic signature."""
    from .release import decide

    lk, batch_id, user = existing_lake(lake), _bid(batch_id), normal_user_id(user)
    try:
        row = decide(lk, batch_id, decision, user, ask_password("Password (signature)"), reason)
    except Exception as e:
        fail(e)
    console.print(
        f"{batch_id} {row['decision']} by {row['printed_name']} "
        f"({row['decided_at']:%Y-%m-%d %H:%M:%S} UTC), signature {row['signature_id']}"
    )


def ebr(
    batch_id: str,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("ebr"),
    lake: LakeOpt = None,
) -> None:
    """Write the electronic batch record of a batch (HTML and PDF)."""
    from .ebr import write_ebr

    lk, batch_id = existing_lake(lake), _bid(batch_id)
    try:
        h, p, c = write_ebr(lk, batch_id, out, actor=f"cli:{getpass.getuser()}")
    except Exception as e:
        fail(e)
    console.print(f"wrote {h} and {p} (content SHA-256 {c.content_hash[:16]}...)")


def backup(dest: Path, lake: LakeOpt = None) -> None:
    """Copy the lake to DEST and verify the copy (file hashes, Delta tables, audit chain)."""
    from .retention import backup as do_backup

    lk = existing_lake(lake)
    try:
        rep = do_backup(lk, dest, actor=f"cli:{getpass.getuser()}")
    except Exception as e:
        fail(e)
    (console if rep.ok else err).print(rep.summary())
    if not rep.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the GxP commands to the `pharma-twin` app."""
    app.add_typer(users_app, name="users")
    app.add_typer(audit_app, name="audit")
    app.add_typer(deviation_app, name="deviation")
    app.add_typer(spec_app, name="spec")
    app.add_typer(amendment_app, name="amendment")
    for fn in (sign, release, ebr, backup):
        app.command(fn.__name__)(fn)
