"""Recipe change requests: an optimiser's recommendation becomes a recipe only by signature.

Why: a recipe decides how every future batch runs; GMP allows it to change only through a
controlled, approved change. A recommended recipe (from `optimise.recipe`) is *requested*:
the requester (a role with ``spec.change``, e.g. a process engineer) signs the new recipe
version and its evidence (the twin's predicted and the verified gain, the seeds); nothing
changes in the recipe file. QA *approves* with an e-signature (meaning ``approval``); only
then is the recipe file rewritten, through `changecontrol.apply_change` (target
``recipes``: validated, diffed, signed, audited). QA may also reject. Each step is a row of
``<lake>/gxp/recipe_change_requests`` (append-only, the newest row is the state) and an
audit entry. A request whose recipe file changed since it was made is refused as stale.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from pharma_assets.lake.storage import UTC_US, Lake
from pharma_assets.twin.config import Recipe, RecipeBook, load_recipes

from . import GXP_LAYER
from .audit import GXP_TABLE_CONFIGURATION, AuditTrail
from .changecontrol import apply_change, sha256_text
from .signatures import sign
from .users import get_user, require

TABLE = "recipe_change_requests"
SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "state": pl.String(),
    "recipe_id": pl.String(),
    "from_version": pl.Int64(),
    "to_version": pl.Int64(),
    "recipes_path": pl.String(),
    "base_sha256": pl.String(),
    "new_content": pl.String(),
    "evidence_json": pl.String(),
    "actor": pl.String(),
    "signature_id": pl.String(),
    "reason": pl.String(),
    "change_id": pl.String(),
    "at": UTC_US,
}


class RequestError(ValueError):
    """The request cannot be made or decided (message says why)."""


def history(lake: Lake) -> pl.DataFrame:
    df = lake.read(GXP_LAYER, TABLE)
    return (df if df is not None else pl.DataFrame(schema=SCHEMA)).sort("at")


def current(lake: Lake) -> pl.DataFrame:
    """The newest row of every request (its state)."""
    h = history(lake)
    return h.group_by("request_id").agg(pl.all().last()).sort("at") if h.height else h


def pending(lake: Lake) -> pl.DataFrame:
    return current(lake).filter(pl.col("state") == "requested")


def _append(lake: Lake, row: dict[str, Any]) -> None:
    lake.append(
        GXP_LAYER,
        TABLE,
        pl.DataFrame({k: [row.get(k)] for k in SCHEMA}, schema=SCHEMA),
        configuration=GXP_TABLE_CONFIGURATION,
    )


def book_with(book: RecipeBook, new: Recipe) -> str:
    """The recipe book's YAML with ``new`` replacing the recipe of the same id."""
    ids = [r.recipe_id for r in book.recipes]
    if new.recipe_id not in ids:
        raise RequestError(f"recipe {new.recipe_id!r} is not in the recipe book ({ids})")
    recipes = [new if r.recipe_id == new.recipe_id else r for r in book.recipes]
    text = yaml.safe_dump(
        {"recipes": [r.model_dump(mode="json") for r in recipes]}, sort_keys=False
    )
    RecipeBook.model_validate(yaml.safe_load(text))
    return "# Recipe book; changed only through change control (gxp/spec_changes).\n" + text


def request(
    lake: Lake,
    recipes_path: str | Path,
    new: Recipe,
    evidence: dict[str, Any],
    user_id: str,
    password: str,
    reason: str,
) -> dict[str, Any]:
    """Record a signed request to adopt ``new`` (the next version of a recipe); the recipe
    file is not touched."""
    p = Path(recipes_path)
    if not p.exists():
        raise RequestError(f"recipe file {p} does not exist")
    text = p.read_text()
    book = load_recipes(p)
    old = book.get(new.recipe_id)
    if new.version != old.version + 1:
        raise RequestError(
            f"recipe {new.recipe_id}: the request must be version "
            f"{old.version + 1} (in use: {old.version}), got {new.version}"
        )
    u = get_user(lake, user_id)
    if u is None:
        raise RequestError(f"user {user_id!r} does not exist")
    require(u, "spec.change")
    content = book_with(book, new)
    rid = "RCR-" + uuid.uuid4().hex[:12]
    ev = json.dumps(evidence, sort_keys=True, default=str)
    sig = sign(
        lake,
        user_id,
        password,
        "authorship",
        TABLE,
        rid,
        {
            "request_id": rid,
            "recipe_id": new.recipe_id,
            "to_version": new.version,
            "new_sha256": sha256_text(content),
            "evidence": ev,
        },
        reason,
        rid,
    )
    row = {
        "request_id": rid,
        "state": "requested",
        "recipe_id": new.recipe_id,
        "from_version": old.version,
        "to_version": new.version,
        "recipes_path": str(p.resolve()),
        "base_sha256": sha256_text(text),
        "new_content": content,
        "evidence_json": ev,
        "actor": user_id,
        "signature_id": sig.signature_id,
        "reason": reason,
        "at": datetime.now(UTC),
    }
    _append(lake, row)
    AuditTrail(lake).record(
        "recipe_change_requested", user_id, TABLE, rid, "state", None, "requested", reason, rid
    )
    return row


def _open(lake: Lake, request_id: str) -> dict[str, Any]:
    cur = current(lake).filter(pl.col("request_id") == request_id)
    if cur.height == 0:
        raise RequestError(f"recipe change request {request_id!r} does not exist")
    row = cur.row(0, named=True)
    if row["state"] != "requested":
        raise RequestError(f"recipe change request {request_id} is already {row['state']}")
    return row


def approve(
    lake: Lake, request_id: str, user_id: str, password: str, reason: str
) -> dict[str, Any]:
    """QA approves (e-signature, meaning approval); the recipe file is then changed through
    change control. Refused if the file changed since the request."""
    row = _open(lake, request_id)
    p = Path(row["recipes_path"])
    if not p.exists() or sha256_text(p.read_text()) != row["base_sha256"]:
        raise RequestError(
            f"recipe change request {request_id} is stale: {p} changed since it "
            "was requested; request again from the current recipe"
        )
    sig = sign(
        lake,
        user_id,
        password,
        "approval",
        TABLE,
        request_id,
        {"request_id": request_id, "new_sha256": sha256_text(row["new_content"])},
        reason,
        request_id,
    )
    change = apply_change(
        lake,
        p,
        row["new_content"],
        user_id,
        password,
        reason,
        target="recipes",
        context_id=request_id,
    )
    new = {
        **row,
        "state": "approved",
        "actor": user_id,
        "signature_id": sig.signature_id,
        "reason": reason,
        "change_id": change["change_id"],
        "at": datetime.now(UTC),
    }
    _append(lake, new)
    AuditTrail(lake).record(
        "recipe_change_approved",
        user_id,
        TABLE,
        request_id,
        "state",
        "requested",
        "approved",
        reason,
        request_id,
    )
    return new


def reject(lake: Lake, request_id: str, user_id: str, password: str, reason: str) -> dict[str, Any]:
    row = _open(lake, request_id)
    u = get_user(lake, user_id)
    if u is None:
        raise RequestError(f"user {user_id!r} does not exist")
    sig = sign(
        lake,
        user_id,
        password,
        "approval",
        TABLE,
        request_id,
        {"request_id": request_id, "decision": "rejected"},
        reason,
        request_id,
    )
    new = {
        **row,
        "state": "rejected",
        "actor": user_id,
        "signature_id": sig.signature_id,
        "reason": reason,
        "at": datetime.now(UTC),
    }
    _append(lake, new)
    AuditTrail(lake).record(
        "recipe_change_rejected",
        user_id,
        TABLE,
        request_id,
        "state",
        "requested",
        "rejected",
        reason,
        request_id,
    )
    return new
