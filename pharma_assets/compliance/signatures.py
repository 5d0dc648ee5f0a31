"""Electronic signatures bound to the exact version of the record signed.

Why: Part 11 asks that a signature shows the printed name, date/time and meaning (11.50),
is linked to its record so it cannot be removed, copied or transferred (11.70), and that the
signer re-enters ID and password at each signing (11.200). Here:

- ``sign`` re-authenticates (a failure counts towards lockout and is audited), checks the
  role grants ``sign.<meaning>``, computes the SHA-256 of the record's canonical JSON and
  stores the signature in ``<lake>/gxp/signatures`` with an HMAC (audit key) over every
  field, including ``record_type``, ``record_id`` and ``record_hash``.
- ``verify_signature`` recomputes both: a signature shown next to another record (or the
  record changed after signing) fails on the record hash; a signature row edited to point at
  another record fails on the HMAC.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

from pharma_assets.lake.storage import UTC_US, Lake

from . import GXP_LAYER
from .audit import GXP_TABLE_CONFIGURATION, AuditTrail, canonical_json, load_key, record_hash
from .users import authenticate, require

TABLE = "signatures"
MEANINGS = ("review", "approval", "responsibility", "authorship")

SCHEMA: dict[str, pl.DataType] = {
    "signature_id": pl.String(),
    "user_id": pl.String(),
    "printed_name": pl.String(),
    "role": pl.String(),
    "meaning": pl.String(),
    "signed_at": UTC_US,
    "record_type": pl.String(),
    "record_id": pl.String(),
    "record_hash": pl.String(),
    "reason": pl.String(),
    "sig_mac": pl.String(),
}


@dataclass(frozen=True)
class Signature:
    signature_id: str
    user_id: str
    printed_name: str
    role: str
    meaning: str
    signed_at: datetime
    record_type: str
    record_id: str
    record_hash: str
    reason: str
    sig_mac: str

    def manifestation(self) -> str:
        """What every display or printout of the record shows (11.50)."""
        return (
            f"Electronically signed by {self.printed_name} ({self.user_id}) on "
            f"{self.signed_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC; meaning: {self.meaning}"
        )


def _payload(sig: Mapping[str, Any]) -> bytes:
    fields = {k: sig[k] for k in SCHEMA if k != "sig_mac"}
    return canonical_json(fields).encode()


def _mac(key: bytes, sig: Mapping[str, Any]) -> str:
    return hmac.digest(key, _payload(sig), "sha256").hex()


def sign(
    lake: Lake,
    user_id: str,
    password: str,
    meaning: str,
    record_type: str,
    record_id: str,
    record: Mapping[str, Any],
    reason: str,
    context_id: str | None = None,
    trail: AuditTrail | None = None,
    permission: str | None = None,
) -> Signature:
    """Re-authenticate ``user_id`` and sign ``record`` (the exact content shown to the signer).

    The signer's role must grant ``permission`` (default ``sign.<meaning>``); the retirement
    of an audit trail uses ``audit.retire``, which only administrators hold."""
    if meaning not in MEANINGS:
        raise ValueError(f"signature meaning {meaning!r} is unknown; use one of {MEANINGS}")
    if not reason.strip():
        raise ValueError("a signature needs a reason (what is being signed and why)")
    trail = trail or AuditTrail(lake)
    user = authenticate(
        lake, user_id, password, purpose="signature_reauth", context_id=context_id, trail=trail
    )
    try:
        require(user, permission or f"sign.{meaning}")
    except Exception as e:
        trail.record(
            "signature_refused",
            user_id,
            table_name=record_type,
            record_id=record_id,
            field=meaning,
            new_value=str(e),
            context_id=context_id,
        )
        raise
    row: dict[str, Any] = {
        "signature_id": "SIG-" + uuid.uuid4().hex[:16],
        "user_id": user.user_id,
        "printed_name": user.full_name,
        "role": user.role,
        "meaning": meaning,
        "signed_at": datetime.now(UTC),
        "record_type": record_type,
        "record_id": record_id,
        "record_hash": record_hash(record),
        "reason": reason,
    }
    row["sig_mac"] = _mac(trail.key, row)
    lake.append(
        GXP_LAYER,
        TABLE,
        pl.DataFrame({k: [v] for k, v in row.items()}, schema=SCHEMA),
        configuration=GXP_TABLE_CONFIGURATION,
    )
    sig = Signature(**row)
    trail.record(
        "e_signature",
        user_id,
        table_name=record_type,
        record_id=record_id,
        field=meaning,
        new_value={
            "signature_id": sig.signature_id,
            "record_hash": sig.record_hash,
            "printed_name": sig.printed_name,
        },
        reason=reason,
        context_id=context_id,
    )
    return sig


@dataclass(frozen=True)
class SignatureCheck:
    ok: bool
    problems: tuple[str, ...] = ()


def verify_signature(
    sig: Signature,
    record: Mapping[str, Any],
    record_id: str | None = None,
    key: bytes | None = None,
) -> SignatureCheck:
    """Is ``sig`` a genuine signature of exactly this ``record`` (and this ``record_id``)?"""
    problems = []
    key = key if key is not None else load_key()
    if not hmac.compare_digest(_mac(key, asdict(sig)), sig.sig_mac):
        problems.append("signature fields were altered (HMAC mismatch): not issued as shown")
    if record_hash(record) != sig.record_hash:
        problems.append(
            "the record differs from the version signed (record hash mismatch): the signature "
            "belongs to another record or the record changed after signing"
        )
    if record_id is not None and record_id != sig.record_id:
        problems.append(f"signature is for record {sig.record_id!r}, not {record_id!r}")
    return SignatureCheck(not problems, tuple(problems))


def signatures_for(
    lake: Lake, record_type: str | None = None, record_id: str | None = None
) -> list[Signature]:
    """Signatures stored for a record (oldest first)."""
    df = lake.read(GXP_LAYER, TABLE)
    if df is None:
        return []
    if record_type is not None:
        df = df.filter(pl.col("record_type") == record_type)
    if record_id is not None:
        df = df.filter(pl.col("record_id") == record_id)
    return [Signature(**r) for r in df.sort("signed_at").iter_rows(named=True)]


def get_signature(lake: Lake, signature_id: str) -> Signature | None:
    df = lake.read(GXP_LAYER, TABLE, filter_expr=pl.col("signature_id") == signature_id)
    if df is None or df.height == 0:
        return None
    return Signature(**df.row(0, named=True))


def sign_as_system(
    lake: Lake,
    signer_id: str,
    printed_name: str,
    meaning: str,
    record_type: str,
    record_id: str,
    record: Mapping[str, Any],
    reason: str,
    context_id: str | None = None,
    trail: AuditTrail | None = None,
) -> Signature:
    """A signature made by the system under a documented, change-controlled rule (e.g. the
    auto-promotion policy), never by a person: ``signer_id`` starts with ``system:``, the
    role is ``system`` and ``printed_name`` names the rule and its approved version, so
    every display shows it was not a human. Stored, HMAC-protected, audited and verified
    exactly like a person's signature; no password (nobody is re-authenticated)."""
    if not signer_id.startswith("system:"):
        raise ValueError(f"a system signer ID starts with 'system:', not {signer_id!r}")
    if meaning not in MEANINGS:
        raise ValueError(f"signature meaning {meaning!r} is unknown; use one of {MEANINGS}")
    if not reason.strip():
        raise ValueError("a signature needs a reason (what is being signed and why)")
    trail = trail or AuditTrail(lake)
    row: dict[str, Any] = {
        "signature_id": "SIG-" + uuid.uuid4().hex[:16],
        "user_id": signer_id,
        "printed_name": printed_name,
        "role": "system",
        "meaning": meaning,
        "signed_at": datetime.now(UTC),
        "record_type": record_type,
        "record_id": record_id,
        "record_hash": record_hash(record),
        "reason": reason,
    }
    row["sig_mac"] = _mac(trail.key, row)
    lake.append(
        GXP_LAYER,
        TABLE,
        pl.DataFrame({k: [v] for k, v in row.items()}, schema=SCHEMA),
        configuration=GXP_TABLE_CONFIGURATION,
    )
    sig = Signature(**row)
    trail.record(
        "e_signature",
        signer_id,
        table_name=record_type,
        record_id=record_id,
        field=meaning,
        new_value={
            "signature_id": sig.signature_id,
            "record_hash": sig.record_hash,
            "printed_name": sig.printed_name,
        },
        reason=reason,
        context_id=context_id,
    )
    return sig
