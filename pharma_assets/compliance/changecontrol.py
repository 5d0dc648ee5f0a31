"""Change control for the CPP specification and the recipes.

Why: the CPP spec decides what counts as an excursion and what a batch is judged against;
GMP requires that such a document changes only through a controlled, signed change with its
reason, and that the version in use is the approved one. Each change is a row in
``<lake>/gxp/spec_changes`` (append-only) with the old and new SHA-256 of the file, the
unified diff, the full new content, the reason and the author's electronic signature, plus an
audit entry. ``check_in_use`` compares the file the pipeline reads with the last approved
version: an edit made outside change control shows up as a mismatch.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from pharma_assets.lake.storage import UTC_US, Lake

from . import GXP_LAYER
from .audit import GXP_TABLE_CONFIGURATION, AuditTrail
from .signatures import sign
from .users import get_user, require

TABLE = "spec_changes"
SCHEMA: dict[str, pl.DataType] = {
    "change_id": pl.String(),
    "target": pl.String(),
    "path": pl.String(),
    "old_sha256": pl.String(),
    "new_sha256": pl.String(),
    "diff": pl.String(),
    "content": pl.String(),
    "reason": pl.String(),
    "author": pl.String(),
    "signature_id": pl.String(),
    "changed_at": UTC_US,
}


def _validators() -> dict[str, Callable[[Path], Any]]:
    from pharma_assets.lake.specs import load_spec
    from pharma_assets.twin.config import load_recipes

    from .promotions import load_policy

    return {"cpp_spec": load_spec, "recipes": load_recipes, "promotion_policy": load_policy}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def history(lake: Lake, target: str | None = None) -> pl.DataFrame:
    df = lake.read(GXP_LAYER, TABLE)
    df = df if df is not None else pl.DataFrame(schema=SCHEMA)
    if target is not None:
        df = df.filter(pl.col("target") == target)
    return df.sort("changed_at")


def apply_change(
    lake: Lake,
    path: str | Path,
    new_text: str,
    user_id: str,
    password: str,
    reason: str,
    target: str = "cpp_spec",
    context_id: str | None = None,
) -> dict[str, Any]:
    """Validate ``new_text``, sign it (meaning: authorship), write it to ``path`` and record
    the change. The first recorded change of a target is its approved baseline (the file may
    be unchanged)."""
    validators = _validators()
    if target not in validators:
        raise ValueError(f"change-control target {target!r} is unknown; use {sorted(validators)}")
    u = get_user(lake, user_id)
    if u is None:
        raise ValueError(f"user {user_id!r} does not exist")
    require(u, "spec.change")
    p = Path(path)
    old_text = p.read_text() if p.exists() else ""
    with tempfile.NamedTemporaryFile("w", suffix=p.suffix, delete=False) as tmp:
        tmp.write(new_text)
    try:
        validators[target](Path(tmp.name))
    except Exception as e:
        raise ValueError(f"the new {target} content is invalid and was not applied: {e}") from e
    finally:
        os.unlink(tmp.name)
    old_sha = sha256_text(old_text) if p.exists() else None
    new_sha = sha256_text(new_text)
    diff = "".join(
        difflib.unified_diff(
            old_text.splitlines(True), new_text.splitlines(True), f"a/{p.name}", f"b/{p.name}"
        )
    )
    change_id = "CC-" + uuid.uuid4().hex[:12]
    sig = sign(
        lake,
        user_id,
        password,
        "authorship",
        target,
        change_id,
        {
            "change_id": change_id,
            "path": str(p),
            "old_sha256": old_sha,
            "new_sha256": new_sha,
            "diff": diff,
        },
        reason,
        context_id,
    )
    tmp_target = p.with_suffix(p.suffix + ".tmp")
    tmp_target.write_text(new_text)
    os.replace(tmp_target, p)
    row = {
        "change_id": change_id,
        "target": target,
        "path": str(p.resolve()),
        "old_sha256": old_sha,
        "new_sha256": new_sha,
        "diff": diff,
        "content": new_text,
        "reason": reason,
        "author": user_id,
        "signature_id": sig.signature_id,
        "changed_at": datetime.now(UTC),
    }
    lake.append(
        GXP_LAYER,
        TABLE,
        pl.DataFrame({k: [v] for k, v in row.items()}, schema=SCHEMA),
        configuration=GXP_TABLE_CONFIGURATION,
    )
    AuditTrail(lake).record(
        "spec_change",
        user_id,
        target,
        str(p.resolve()),
        "sha256",
        old_sha,
        new_sha,
        reason,
        context_id,
    )
    return row


@dataclass(frozen=True)
class InUseCheck:
    ok: bool
    target: str
    current_sha256: str | None
    approved_sha256: str | None
    detail: str


def check_in_use(lake: Lake, path: str | Path, target: str = "cpp_spec") -> InUseCheck:
    """Is the file at ``path`` exactly the last version approved through change control?"""
    p = Path(path)
    cur = sha256_text(p.read_text()) if p.exists() else None
    h = history(lake, target)
    if h.height == 0:
        return InUseCheck(
            False,
            target,
            cur,
            None,
            f"no approved version of {target} recorded;"
            " record a baseline with `pharma-twin spec change`",
        )
    approved = h["new_sha256"][-1]
    if cur != approved:
        return InUseCheck(
            False,
            target,
            cur,
            approved,
            f"{p} differs from the approved version"
            f" {h['change_id'][-1]}: it was edited outside change control",
        )
    return InUseCheck(True, target, cur, approved, f"in use = approved {h['change_id'][-1]}")
