"""Input conditions that need a person: what `pharma-twin pipeline` prints after a run.

- telemetry waiting for its batch start: bronze accepted the files, but silver cannot
  validate them until the batch's ``batch_start`` MES event lands (they are pending, not
  lost);
- held amendments: deliveries that change accepted values (``amendments``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

from . import amendments, bronze
from .storage import Lake


@dataclass
class InputAlarms:
    waiting: dict[str, int] = field(default_factory=dict)  # batch -> telemetry files waiting
    held: list[dict[str, object]] = field(default_factory=list)  # held amendments

    def lines(self) -> list[str]:
        out = []
        if self.waiting:
            shown = ", ".join(f"{b} ({n} files)" for b, n in sorted(self.waiting.items())[:20])
            more = f" and {len(self.waiting) - 20} more" if len(self.waiting) > 20 else ""
            out.append(
                f"{sum(self.waiting.values())} telemetry files of {len(self.waiting)} batches "
                f"wait for their batch_start MES event: {shown}{more}"
            )
        for a in self.held:
            out.append(
                f"amendment held: {a['amendment_id']} {a['source_file']} ({a['kind']}, "
                f"{a['keys_changed']} keys change accepted values); review with `pharma-twin "
                "amendment list`, apply with `pharma-twin amendment apply ID --reason ... --user ...`"
            )
        return out


def waiting_for_batch_start(lake: Lake, batch_ids: Sequence[str] | None = None) -> dict[str, int]:
    """Batches (all, or of ``batch_ids``) whose accepted telemetry files silver has not
    processed for want of a batch start: batch -> files waiting."""
    log = bronze.read_log(lake, batch_ids, "telemetry").filter(pl.col("status") == "accepted")
    if log.height == 0:
        return {}
    ids = None if batch_ids is None else pl.col("batch_id").is_in(list(batch_ids))
    done = lake.read("silver", "telemetry_log", ["source_file"], filter_expr=ids)
    if done is not None and done.height:
        log = log.join(done, on="source_file", how="anti")
    started = lake.read("silver", "batches", ["batch_id"], filter_expr=ids)
    if started is not None and started.height:
        log = log.join(started, on="batch_id", how="anti")
    counts = log.group_by("batch_id").len()
    return dict(zip(counts["batch_id"].to_list(), counts["len"].to_list(), strict=True))


def input_alarms(lake: Lake) -> InputAlarms:
    held = amendments.held(lake)
    return InputAlarms(
        waiting_for_batch_start(lake),
        held.select("amendment_id", "source_file", "kind", "keys_changed").to_dicts(),
    )
