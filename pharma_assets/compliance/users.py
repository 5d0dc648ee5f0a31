"""Users, roles and sessions: who may do what, proven by an ID and a password.

Why: Part 11 (11.10(d), (g), 11.300) asks that only authorised people use the system, that
the system checks what each may do, that ID/password pairs are unique, aged, and that
failed attempts are detected. Every change to a user and every login, failed login and
logout is written to the audit trail.

Passwords must be at least 10 characters and hard to guess: zxcvbn (a maintained estimator
that knows the common and breached-password lists, dictionary words, names, keyboard walks,
repeats and dates) must score them at least 3 of 4, with the user ID and name as known
inputs. A failed login says the same thing for an unknown ID, a wrong password, a locked
and a disabled account (the reason goes only into the audit trail), and an ID that matches no
account is never stored (it may be a password typed into the wrong field). Sessions end
when the account is disabled, locked, changes role or has its password reset or changed.

Storage: ``<lake>/gxp/users`` is append-only: each change appends a new version of the
user's row (the current state is the highest ``version``), so the history of every account
is kept. A user ID is never reused: creating an ID that ever existed is refused, even after
the account was disabled. Passwords are hashed with argon2id (argon2-cffi defaults).
"""

from __future__ import annotations

import contextlib
import functools
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from pharma_assets.lake.storage import UTC_US, Lake

from . import GXP_LAYER
from .audit import GXP_TABLE_CONFIGURATION, AuditTrail

TABLE = "users"

# permissions per role; admins manage accounts but cannot sign GMP records (segregation of
# duties; the one thing an admin signs is the retirement of an audit trail), QA is the only
# role that approves, closes deviations, releases batches and approves model promotions;
# viewers only read dashboards
ROLES: dict[str, frozenset[str]] = {
    "operator": frozenset({"deviation.open", "alarm.respond", "sign.authorship", "record.view"}),
    "process_engineer": frozenset(
        {
            "deviation.open",
            "deviation.investigate",
            "alarm.respond",
            "spec.change",
            "record.view",
            "sign.authorship",
            "sign.review",
            "sign.responsibility",
        }
    ),
    "qa": frozenset(
        {
            "deviation.open",
            "deviation.investigate",
            "deviation.close",
            "alarm.respond",
            "batch.release",
            "spec.change",
            "record.view",
            "audit.view",
            "sign.authorship",
            "sign.review",
            "sign.responsibility",
            "sign.approval",
            "model.approve",
        }
    ),
    "maintenance": frozenset(
        {"deviation.open", "alarm.respond", "record.view", "sign.authorship", "sign.responsibility"}
    ),
    "admin": frozenset({"user.manage", "audit.view", "audit.retire", "record.view"}),
    # read-only: the plant dashboards and GMP records, no action and no signature
    "viewer": frozenset({"record.view"}),
}


@dataclass(frozen=True)
class Policy:
    """Account rules; the defaults follow common GMP practice (document local SOP values)."""

    min_password_length: int = 10
    min_password_strength: int = 3  # zxcvbn score 0-4
    max_failed_attempts: int = 5
    password_max_age_days: int = 90
    session_idle_minutes: int = 15


POLICY = Policy()
_HASHER = PasswordHasher()

SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "version": pl.Int64(),
    "full_name": pl.String(),
    "role": pl.String(),
    "password_hash": pl.String(),
    "password_set_at": UTC_US,
    "failed_attempts": pl.Int64(),
    "locked": pl.Boolean(),
    "active": pl.Boolean(),
    "must_change_password": pl.Boolean(),
    "created_at": UTC_US,
    "updated_at": UTC_US,
    "updated_by": pl.String(),
    "change": pl.String(),
}


class AuthError(Exception):
    """Login or re-authentication refused (the message is safe to show to the user)."""


class PasswordExpiredError(AuthError):
    pass


class SessionExpiredError(AuthError):
    pass


class PermissionDeniedError(Exception):
    """The user's role does not grant the permission the action needs."""


@dataclass(frozen=True)
class User:
    user_id: str
    version: int
    full_name: str
    role: str
    password_hash: str
    password_set_at: datetime
    failed_attempts: int
    locked: bool
    active: bool
    must_change_password: bool
    created_at: datetime
    updated_at: datetime
    updated_by: str
    change: str

    @property
    def permissions(self) -> frozenset[str]:
        return ROLES.get(self.role, frozenset())

    def can(self, permission: str) -> bool:
        return self.active and permission in self.permissions


@dataclass(frozen=True)
class Session:
    """A logged-in user; valid until ``expires_at`` (idle timeout, renewed by check_session)."""

    session_id: str
    user_id: str
    full_name: str
    role: str
    started_at: datetime
    expires_at: datetime


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def require(user: User, permission: str) -> None:
    """Raise PermissionDeniedError unless ``user``'s role grants ``permission``."""
    if not user.can(permission):
        raise PermissionDeniedError(
            f"user {user.user_id!r} (role {user.role}) lacks permission {permission!r}; "
            f"roles that have it: {sorted(r for r, p in ROLES.items() if permission in p)}"
        )


# one message for every refused login: it must not tell an unknown ID, a wrong password, a
# locked and a disabled account apart (the audit trail records which it was)
LOGIN_REFUSED = (
    "login refused: unknown user ID or wrong password, or the account is locked or disabled "
    "(an administrator can tell which)"
)
UNKNOWN_USER = "unknown-user"  # stored instead of an ID that matches no account


def check_password_policy(
    user_id: str, password: str, policy: Policy = POLICY, full_name: str = ""
) -> None:
    """Length, not containing the ID, and a zxcvbn strength score of at least
    ``policy.min_password_strength`` (common/breached passwords, words, names, repeats,
    sequences and dates score low). The message never contains the password."""
    if len(password) < policy.min_password_length:
        raise ValueError(
            f"password for {user_id!r} is {len(password)} characters; the policy needs at "
            f"least {policy.min_password_length}"
        )
    if user_id.lower() in password.lower():
        raise ValueError(f"password for {user_id!r} must not contain the user ID")
    from zxcvbn import zxcvbn  # lazy: its dictionaries cost ~0.2 s at every code-location load

    est = zxcvbn(password[:72], user_inputs=[user_id, *full_name.split()])
    if est["score"] < policy.min_password_strength:
        fb = est.get("feedback") or {}
        hint = " ".join([fb.get("warning") or "", *(fb.get("suggestions") or [])]).strip()
        raise ValueError(
            f"password for {user_id!r} is too easy to guess (strength {est['score']} of 4, the "
            f"policy needs {policy.min_password_strength})" + (f": {hint}" if hint else "")
        )


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against when there is no usable account, so a refusal costs the same
    time whatever its reason."""
    return _HASHER.hash(secrets.token_hex(16))


# ---------------------------------------------------------------------------- storage
def _all_versions(lake: Lake) -> pl.DataFrame:
    df = lake.read(GXP_LAYER, TABLE)
    return df if df is not None else pl.DataFrame(schema=SCHEMA)


def _current(lake: Lake) -> pl.DataFrame:
    return _all_versions(lake).sort("version").group_by("user_id", maintain_order=True).last()


def get_user(lake: Lake, user_id: str) -> User | None:
    """The current version of a user, None if the ID never existed."""
    df = lake.read(GXP_LAYER, TABLE, filter_expr=pl.col("user_id") == user_id)
    if df is None or df.height == 0:
        return None
    return User(**df.sort("version").row(-1, named=True))


def list_users(lake: Lake) -> pl.DataFrame:
    """Current state of every account (without password hashes), by user ID."""
    return _current(lake).drop("password_hash").sort("user_id")


def _write(lake: Lake, user: User) -> None:
    row = {k: [getattr(user, k)] for k in SCHEMA}
    lake.append(
        GXP_LAYER, TABLE, pl.DataFrame(row, schema=SCHEMA), configuration=GXP_TABLE_CONFIGURATION
    )


@contextlib.contextmanager
def _locked(lake: Lake) -> Iterator[None]:
    with lake.lock("gxp_users"):
        lake.forget()
        yield


def _save(
    lake: Lake,
    trail: AuditTrail,
    user: User,
    actor: str,
    change: str,
    reason: str | None,
    fields: dict[str, tuple[Any, Any]],
    context_id: str | None = None,
    now: datetime | None = None,
) -> User:
    new = replace(
        user, version=user.version + 1, updated_at=_now(now), updated_by=actor, change=change
    )
    _write(lake, new)
    from .audit import AuditEvent

    trail.append(
        [
            AuditEvent(
                action=f"user_{change}",
                actor=actor,
                table_name=f"{GXP_LAYER}/{TABLE}",
                record_id=user.user_id,
                field=f,
                old_value=o,
                new_value=n,
                reason=reason,
                context_id=context_id,
            )
            for f, (o, n) in fields.items()
        ]
        or [
            AuditEvent(
                action=f"user_{change}",
                actor=actor,
                table_name=f"{GXP_LAYER}/{TABLE}",
                record_id=user.user_id,
                reason=reason,
                context_id=context_id,
            )
        ]
    )
    return new


def _manager(lake: Lake, actor_id: str, bootstrap: bool) -> str:
    if bootstrap:
        if (_current(lake)["role"] == "admin").any():
            raise PermissionDeniedError(
                "bootstrap is only allowed while no admin account exists; "
                "log in as an admin to manage users"
            )
        return actor_id
    actor = get_user(lake, actor_id)
    if actor is None:
        raise PermissionDeniedError("the acting user ID matches no account: cannot manage accounts")
    require(actor, "user.manage")
    return actor_id


# ---------------------------------------------------------------------------- management
def create_user(
    lake: Lake,
    user_id: str,
    full_name: str,
    role: str,
    password: str,
    actor_id: str,
    reason: str,
    bootstrap: bool = False,
    trail: AuditTrail | None = None,
    now: datetime | None = None,
) -> User:
    """Create an account. ``bootstrap=True`` allows the first admin to be created by
    ``actor_id`` (e.g. ``system:<os user>``) while no admin exists."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is unknown; roles are {sorted(ROLES)}")
    if not user_id or not user_id.replace(".", "").replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"user ID {user_id!r} must be letters, digits, '.', '_' or '-'")
    if not full_name.strip():
        raise ValueError(f"user {user_id!r} needs a full (printed) name for signatures")
    check_password_policy(user_id, password, full_name=full_name)
    trail = trail or AuditTrail(lake)
    with _locked(lake):
        actor = _manager(lake, actor_id, bootstrap)
        if get_user(lake, user_id) is not None:
            raise ValueError(
                f"user ID {user_id!r} exists or existed before; IDs are never reused "
                "(choose another ID)"
            )
        t = _now(now)
        u = User(
            user_id=user_id,
            version=-1,
            full_name=full_name,
            role=role,
            password_hash=_HASHER.hash(password),
            password_set_at=t,
            failed_attempts=0,
            locked=False,
            active=True,
            must_change_password=False,
            created_at=t,
            updated_at=t,
            updated_by=actor,
            change="created",
        )
        return _save(
            lake,
            trail,
            u,
            actor,
            "created",
            reason,
            {"role": (None, role), "full_name": (None, full_name)},
            now=now,
        )


def set_role(lake: Lake, user_id: str, role: str, actor_id: str, reason: str) -> User:
    if role not in ROLES:
        raise ValueError(f"role {role!r} is unknown; roles are {sorted(ROLES)}")
    trail = AuditTrail(lake)
    with _locked(lake):
        actor = _manager(lake, actor_id, False)
        u = _existing(lake, user_id)
        return _save(
            lake,
            trail,
            replace(u, role=role),
            actor,
            "role_changed",
            reason,
            {"role": (u.role, role)},
        )


def disable_user(lake: Lake, user_id: str, actor_id: str, reason: str) -> User:
    """Disable an account for good (the ID stays reserved)."""
    trail = AuditTrail(lake)
    with _locked(lake):
        actor = _manager(lake, actor_id, False)
        u = _existing(lake, user_id)
        return _save(
            lake,
            trail,
            replace(u, active=False),
            actor,
            "disabled",
            reason,
            {"active": (u.active, False)},
        )


def reset_password(lake: Lake, user_id: str, new_password: str, actor_id: str, reason: str) -> User:
    """Administrator reset (forgotten password, lockout, suspected compromise): unlocks the
    account, ends the user's live sessions (``check_session`` refuses sessions started before
    the reset) and forces a change at the next login."""
    trail = AuditTrail(lake)
    with _locked(lake):
        actor = _manager(lake, actor_id, False)
        u = _existing(lake, user_id)
        check_password_policy(user_id, new_password, full_name=u.full_name)
        new = replace(
            u,
            password_hash=_HASHER.hash(new_password),
            password_set_at=_now(None),
            failed_attempts=0,
            locked=False,
            must_change_password=True,
        )
        return _save(
            lake,
            trail,
            new,
            actor,
            "password_reset",
            reason,
            {"password": (None, "reset"), "locked": (u.locked, False)},
        )


def change_password(
    lake: Lake, user_id: str, old_password: str, new_password: str, now: datetime | None = None
) -> User:
    """The user changes their own password (allowed when it has expired)."""
    if new_password == old_password:
        raise ValueError("the new password must differ from the old one")
    trail = AuditTrail(lake)
    authenticate(
        lake,
        user_id,
        old_password,
        purpose="password_change",
        allow_expired=True,
        trail=trail,
        now=now,
    )
    with _locked(lake):
        u = _existing(lake, user_id)
        check_password_policy(user_id, new_password, full_name=u.full_name)
        new = replace(
            u,
            password_hash=_HASHER.hash(new_password),
            password_set_at=_now(now),
            must_change_password=False,
        )
        return _save(
            lake,
            trail,
            new,
            user_id,
            "password_changed",
            "password change by user",
            {"password": (None, "changed")},
            now=now,
        )


def _existing(lake: Lake, user_id: str) -> User:
    u = get_user(lake, user_id)
    if u is None:
        raise ValueError(f"user {user_id!r} does not exist (see `pharma-twin users list`)")
    return u


# ---------------------------------------------------------------------------- login
def authenticate(
    lake: Lake,
    user_id: str,
    password: str,
    purpose: str = "login",
    context_id: str | None = None,
    allow_expired: bool = False,
    trail: AuditTrail | None = None,
    now: datetime | None = None,
    policy: Policy = POLICY,
) -> User:
    """Check an ID/password pair (login or re-authentication before a signature).

    Failures are counted per account; after ``max_failed_attempts`` consecutive failures the
    account is locked until an administrator resets it. Success and failure are audited.

    Every refusal before the password is proven raises AuthError(LOGIN_REFUSED), whatever
    the reason (unknown ID, wrong password, locked, disabled), after the same argon2 work;
    the reason is audited. An ID that matches no account is recorded as ``unknown-user``
    with an empty record ID: what was typed may be a password in the wrong field."""
    trail = trail or AuditTrail(lake)
    t = _now(now)

    def fail(
        detail: str, known: bool = True, msg: str = LOGIN_REFUSED, cls: type[AuthError] = AuthError
    ) -> AuthError:
        who = user_id if known else UNKNOWN_USER
        trail.record(
            f"{purpose}_failed",
            who,
            table_name=f"{GXP_LAYER}/{TABLE}",
            record_id=user_id if known else "",
            field="outcome",
            new_value=detail,
            context_id=context_id,
        )
        return cls(msg)

    def password_ok(hashed: str) -> bool:
        try:
            return bool(_HASHER.verify(hashed, password))
        except (VerificationError, InvalidHashError):
            return False

    with _locked(lake):
        u = get_user(lake, user_id) if user_id else None
        if u is None or not u.active or u.locked:
            password_ok(_dummy_hash())  # same cost as a real check
            if u is None:
                raise fail("unknown user ID", known=False)
            raise fail("account disabled" if not u.active else "account locked")
        if not password_ok(u.password_hash):
            n = u.failed_attempts + 1
            lock = n >= policy.max_failed_attempts
            _write(
                lake,
                replace(
                    u,
                    version=u.version + 1,
                    failed_attempts=n,
                    locked=lock,
                    updated_at=t,
                    updated_by="system",
                    change="failed_attempt",
                ),
            )
            if lock:
                trail.record(
                    "account_locked",
                    "system",
                    table_name=f"{GXP_LAYER}/{TABLE}",
                    record_id=user_id,
                    field="locked",
                    old_value="false",
                    new_value="true",
                    reason=f"{n} consecutive failed attempts",
                )
            raise fail(f"wrong password ({n})")
        if u.failed_attempts:
            u = replace(
                u,
                version=u.version + 1,
                failed_attempts=0,
                updated_at=t,
                updated_by="system",
                change="failures_reset",
            )
            _write(lake, u)
    if not allow_expired:
        age = t - u.password_set_at
        if u.must_change_password or age > timedelta(days=policy.password_max_age_days):
            raise fail(
                "password expired",
                msg=f"the password of {user_id!r} has expired; change it first",
                cls=PasswordExpiredError,
            )
    trail.record(
        purpose,
        user_id,
        table_name=f"{GXP_LAYER}/{TABLE}",
        record_id=user_id,
        field="outcome",
        new_value="success",
        context_id=context_id,
    )
    return u


def login(
    lake: Lake,
    user_id: str,
    password: str,
    now: datetime | None = None,
    policy: Policy = POLICY,
) -> Session:
    """Log in: returns a session that expires after ``session_idle_minutes`` of inactivity."""
    sid = "sess-" + secrets.token_hex(8)
    u = authenticate(lake, user_id, password, "login", context_id=sid, now=now, policy=policy)
    t = _now(now)
    return Session(
        sid, u.user_id, u.full_name, u.role, t, t + timedelta(minutes=policy.session_idle_minutes)
    )


def check_session(
    lake: Lake, session: Session, now: datetime | None = None, policy: Policy = POLICY
) -> Session:
    """Refuse an expired session or one whose account was disabled, locked, changed role or
    had its password reset or changed since the login (an administrator's reset after a
    suspected compromise ends every live session); otherwise return it with its idle
    timeout renewed. An ended session is audited (``session_expired``/``session_revoked``)."""
    t = _now(now)
    if t > session.expires_at:
        AuditTrail(lake).record(
            "session_expired",
            session.user_id,
            record_id=session.user_id,
            context_id=session.session_id,
        )
        raise SessionExpiredError(
            f"session of {session.user_id!r} expired at {session.expires_at:%H:%M:%S} UTC; "
            "log in again"
        )
    u = get_user(lake, session.user_id)
    why = (
        "account missing"
        if u is None
        else "account disabled"
        if not u.active
        else "account locked"
        if u.locked
        else f"role changed to {u.role}"
        if u.role != session.role
        else "password reset or changed after login"
        if u.password_set_at > session.started_at or u.must_change_password
        else None
    )
    if why is not None:
        AuditTrail(lake).record(
            "session_revoked",
            session.user_id,
            table_name=f"{GXP_LAYER}/{TABLE}",
            record_id=session.user_id,
            field="session",
            new_value=why,
            context_id=session.session_id,
        )
        raise SessionExpiredError(f"account {session.user_id!r} changed ({why}); log in again")
    return replace(session, expires_at=t + timedelta(minutes=policy.session_idle_minutes))


def logout(lake: Lake, session: Session) -> None:
    AuditTrail(lake).record(
        "logout",
        session.user_id,
        table_name=f"{GXP_LAYER}/{TABLE}",
        record_id=session.user_id,
        context_id=session.session_id,
    )


DEMO_USERS = [
    ("admin", "Ada Admin", "admin"),
    ("qa.lead", "Quinn Assurance", "qa"),
    ("pe.smith", "Pat Engineer", "process_engineer"),
    ("op.jones", "Olive Operator", "operator"),
    ("mx.brown", "Max Maintenance", "maintenance"),
    ("view.only", "Vera Viewer", "viewer"),
]


def create_demo_users(lake: Lake, seed: int | None = None) -> list[tuple[str, str, str]]:
    """Demo accounts for `make demo`: [(user_id, role, password)]. Existing IDs are skipped
    (their password cannot be shown again and is returned as ``"(unchanged)"``)."""
    out: list[tuple[str, str, str]] = []
    rng = secrets.SystemRandom() if seed is None else __import__("random").Random(seed)
    for uid, name, role in DEMO_USERS:
        if get_user(lake, uid) is not None:
            out.append((uid, role, "(unchanged)"))
            continue
        while True:  # random, and strong enough for the policy (almost always at once)
            pw = "Demo-" + "".join(rng.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(10))
            try:
                check_password_policy(uid, pw, full_name=name)
                break
            except ValueError:
                continue
        create_user(
            lake,
            uid,
            name,
            role,
            pw,
            actor_id="admin" if uid != "admin" else "system:demo",
            reason="demo account",
            bootstrap=uid == "admin",
        )
        out.append((uid, role, pw))
    return out
