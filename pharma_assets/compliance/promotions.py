"""Model promotions as signed, audited GxP actions.

Why: a model that flags contamination or predicts titer influences GMP decisions, so moving
a model version into a stage (e.g. ``Production``) is a controlled change: the user
re-authenticates, needs the ``model.promote`` permission, signs the promotion (meaning:
responsibility) and the change is written to the audit trail with the old and new stage.
The ML code calls ``promote_model`` before (or instead of) changing the registry stage.
"""

from __future__ import annotations

from pharma_assets.lake.storage import Lake

from .audit import AuditTrail
from .signatures import Signature, sign
from .users import get_user, require


def promote_model(
    lake: Lake, user_id: str, password: str, model_name: str, version: str, stage: str,
    reason: str, previous_stage: str | None = None, context_id: str | None = None,
) -> Signature:  # fmt: skip
    """Sign and audit the promotion of ``model_name`` version ``version`` to ``stage``."""
    u = get_user(lake, user_id)
    if u is None:
        raise ValueError(f"user {user_id!r} does not exist")
    require(u, "model.promote")
    record = {"model": model_name, "version": str(version), "stage": stage,
              "previous_stage": previous_stage}  # fmt: skip
    record_id = f"{model_name}/{version}"
    sig = sign(lake, user_id, password, "responsibility", "model_promotion", record_id, record,
               reason, context_id)  # fmt: skip
    AuditTrail(lake).record("model_promotion", user_id, "mlflow", record_id, "stage",
                            previous_stage, stage, reason, context_id)  # fmt: skip
    return sig
