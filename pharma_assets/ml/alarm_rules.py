"""Alarm persistence rules: when a model's raw alarms become an alarm an operator sees.

A raw alarm is one sample over the model's threshold: a 5-minute window of the
contamination detector, one maturity step (an hour today) of MSPC. A single sample over a
99 % limit happens on most long batches by chance, so operators get a **confirmed** alarm
only when at least ``k`` of the last ``n`` samples of the batch alarmed (``k == n``: ``k``
in a row). Rules count samples, not clock time, so a model whose samples are not hourly
(issue 15: MSPC per sample / maturity) uses the same rule unchanged.

The rule of each model is chosen on its **training period only** (:func:`choose_rule`): the
least persistent candidate (fewest samples ``k``, then the most gap-tolerant ``n``) under
which at most ``target_share`` (5 %) of the good training batches would have had any
confirmed alarm. Good = what the plant knows (harvested / right first time); no ground
truth is used. The rule is stored with the model and applied wherever its alarms are used:
the evaluation (:func:`batch_figures`), ``gold/contamination_risk`` and ``gold/mspc_scores``
(``confirmed_alarm``), ``gold/mspc_alarms`` (``confirmed``) and the automatic deviations
(one per batch with a confirmed contamination alarm).

Plain Python (polars), no Dagster.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

TARGET_GOOD_BATCH_SHARE = 0.05  # issue 14: <= 5 % of good batches with any confirmed alarm
TARGET_DETECTION = 0.90  # issue 14: >= 90 % of faulty / contaminated batches detected
K_CANDIDATES = (1, 2, 3, 4, 6, 8, 12, 18, 24, 36, 48, 72, 96)


@dataclass(frozen=True)
class PersistenceRule:
    """Confirmed at a sample when at least ``k`` of the last ``n`` samples alarmed."""

    k: int
    n: int
    sample: str = "sample"  # what one sample is, for reports ("5-min window", "hour")

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"persistence rule needs 1 <= k <= n, got k={self.k}, n={self.n}")

    def describe(self) -> str:
        if self.k == self.n:
            return f"{self.k} {self.sample}(s) in a row" if self.k > 1 else f"any {self.sample}"
        return f"{self.k} of the last {self.n} {self.sample}s"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PersistenceRule:
        return cls(int(d["k"]), int(d["n"]), str(d.get("sample", "sample")))

    def confirmed(self, alarms: Sequence[bool]) -> list[bool]:
        """Plain-Python reference of :meth:`expr` for one batch's samples in order."""
        out, window = [], []
        for a in alarms:
            window.append(bool(a))
            if len(window) > self.n:
                window.pop(0)
            out.append(sum(window) >= self.k)
        return out

    def expr(self, alarm: pl.Expr, by: str = "batch_id") -> pl.Expr:
        """Confirmed flag per row of a frame sorted by (``by``, sample order). The first
        samples of a batch count what there is (a batch that starts alarmed confirms after
        ``k`` samples, as with ``n`` in a row)."""
        a = alarm.fill_null(False).cast(pl.Int32)
        if self.n == 1:
            return alarm.fill_null(False)
        return (a.rolling_sum(self.n, min_samples=1).over(by) >= self.k).fill_null(False)

    def apply(
        self,
        df: pl.DataFrame,
        order: str,
        alarm: str = "alarm",
        by: str = "batch_id",
        out: str = "confirmed_alarm",
    ) -> pl.DataFrame:
        """``df`` sorted by (``by``, ``order``) with the confirmed flag in ``out``."""
        return df.sort(by, order).with_columns(self.expr(pl.col(alarm), by).alias(out))


def candidates(ks: Iterable[int] = K_CANDIDATES, sample: str = "sample") -> list[PersistenceRule]:
    """Candidate rules in order of preference: fewer samples first (a sustained fault is
    confirmed after ``k`` samples whatever ``n``), and for the same ``k`` the most
    gap-tolerant ``n`` first (1.5 k, then k in a row)."""
    out = []
    for k in ks:
        # k = 1: a single sample confirms, a window would only prolong the alarm
        for n in sorted({k, math.ceil(1.5 * k) if k > 1 else 1}, reverse=True):
            out.append(PersistenceRule(k, n, sample))
    return out


@dataclass
class RuleChoice:
    rule: PersistenceRule
    train_good_batch_share: float  # under the chosen rule
    n_train_batches: int
    met: bool  # False when no candidate reached the target (the strictest is returned)
    table: pl.DataFrame  # every candidate tried: k, n, share

    def summary(self) -> dict[str, float]:
        return {
            "alarm_rule_k": float(self.rule.k),
            "alarm_rule_n": float(self.rule.n),
            "train_good_batch_alarm_share": self.train_good_batch_share,
            "n_train_good_batches": float(self.n_train_batches),
        }


def batch_any_confirmed(
    samples: pl.DataFrame, rule: PersistenceRule, order: str, alarm: str = "alarm"
) -> pl.DataFrame:
    """One row per batch: did it have any confirmed alarm under ``rule``?"""
    return (
        rule.apply(samples.select("batch_id", order, alarm), order, alarm)
        .group_by("batch_id")
        .agg(pl.col("confirmed_alarm").any())
    )


def choose_rule(
    samples: pl.DataFrame,
    order: str,
    alarm: str = "alarm",
    target_share: float = TARGET_GOOD_BATCH_SHARE,
    sample: str = "sample",
    ks: Iterable[int] = K_CANDIDATES,
) -> RuleChoice:
    """The first candidate under which at most ``target_share`` of the batches in
    ``samples`` (good TRAINING batches only: ``batch_id``, ``order``, ``alarm``) have any
    confirmed alarm. If none does, the strictest candidate, with ``met=False``."""
    if samples.height == 0:
        raise ValueError("no training samples to choose an alarm rule on")
    rows = []
    chosen: tuple[PersistenceRule, float] | None = None
    cands = candidates(ks, sample)
    n_b = samples["batch_id"].n_unique()
    for r in cands:
        share = _share(batch_any_confirmed(samples, r, order, alarm)["confirmed_alarm"])
        rows.append({"k": r.k, "n": r.n, "train_good_batch_share": share})
        if share <= target_share:
            chosen = (r, share)
            break
    table = pl.DataFrame(rows)
    if chosen is None:
        last = cands[-1]
        return RuleChoice(last, rows[-1]["train_good_batch_share"], n_b, False, table)
    return RuleChoice(chosen[0], chosen[1], n_b, True, table)


# ----------------------------------------------------------------------------- figures


def batch_figures(
    samples: pl.DataFrame,
    rule: PersistenceRule,
    order_ts: str,
    good_ids: Sequence[str],
    onsets: pl.DataFrame,
    batch_end: pl.DataFrame | None = None,
    require_new_run: bool = False,
) -> dict[str, float]:
    """Per-batch figures of a rule on scored samples (held-out batches).

    ``samples``: ``batch_id``, ``order_ts`` (the sample's end time), ``alarm``.
    ``good_ids``: the good batches (share with any confirmed alarm, target <= 5 %).
    ``onsets``: ``batch_id``, ``onset_ts`` of the faulty batches to detect (first onset per
    batch). Detected: a confirmed alarm after onset (and no later than the batch end when
    ``batch_end`` gives ``batch_id``, ``end_ts``); with ``require_new_run`` the confirmed
    sample's alarm run must have started after onset (a run already going on at onset does
    not detect a new fault). Delay: first such confirmed alarm - onset, hours.
    """
    s = rule.apply(samples.select("batch_id", order_ts, "alarm"), order_ts)
    s = s.with_columns(
        _new=pl.col("alarm") & ~pl.col("alarm").shift(1).over("batch_id").fill_null(False)
    ).with_columns(_run=pl.col("_new").cast(pl.Int32).cum_sum().over("batch_id"))
    s = s.with_columns(run_start=pl.col(order_ts).first().over("batch_id", "_run")).drop(
        "_new", "_run"
    )
    per = s.group_by("batch_id").agg(pl.col("confirmed_alarm").any())
    good = per.filter(pl.col("batch_id").is_in(list(good_ids)))
    on = onsets.group_by("batch_id").agg(pl.col("onset_ts").min())
    on = on.filter(pl.col("batch_id").is_in(s["batch_id"].unique().implode()))
    j = s.join(on, on="batch_id", how="inner")
    if batch_end is not None:
        j = j.join(batch_end.select("batch_id", "end_ts"), on="batch_id", how="left")
    after = pl.col("confirmed_alarm") & (pl.col(order_ts) > pl.col("onset_ts"))
    if require_new_run:
        after = after & (pl.col("run_start") > pl.col("onset_ts"))
    if batch_end is not None:
        after = after & (pl.col("end_ts").is_null() | (pl.col(order_ts) <= pl.col("end_ts")))
    det = j.group_by("batch_id").agg(
        pl.col("onset_ts").first(), first_ts=pl.col(order_ts).filter(after).min()
    )
    delays = (
        det.filter(pl.col("first_ts").is_not_null())
        .select((pl.col("first_ts") - pl.col("onset_ts")).dt.total_microseconds() / 3.6e9)
        .to_series()
        .to_numpy()
    )
    n_f = det.height
    n_d = int(det["first_ts"].is_not_null().sum())
    return {
        "alarm_rule_k": float(rule.k),
        "alarm_rule_n": float(rule.n),
        "n_good_batches": float(good.height),
        "good_batch_alarm_share": _share(good["confirmed_alarm"]),
        "n_faulty_batches": float(n_f),
        "n_faulty_detected": float(n_d),
        "batch_detection_rate": n_d / n_f if n_f else float("nan"),
        "median_detection_delay_h": float(np.median(delays)) if delays.size else float("nan"),
    }


def _share(flags: pl.Series) -> float:
    """Share of True in a boolean column (NaN when empty)."""
    return float(flags.cast(pl.Float64).to_numpy().mean()) if flags.len() else float("nan")


def rule_of(model: Any, default: PersistenceRule) -> PersistenceRule:
    """The rule stored with a model (``model.alarm_rule`` or ``model.extra['alarm_rule']``),
    else ``default`` (models trained before rules existed)."""
    r = getattr(model, "alarm_rule", None)
    if r is None:
        r = (getattr(model, "extra", None) or {}).get("alarm_rule")
    if isinstance(r, PersistenceRule):
        return r
    if isinstance(r, dict):
        return PersistenceRule.from_dict(r)
    return default


# ----------------------------------------------------------------------------- per model

CONTAMINATION_DEFAULT = PersistenceRule(1, 1, "5-min window")  # before rules existed
MSPC_DEFAULT = PersistenceRule(3, 3, "hour")


def _prefixed(d: dict[str, float], prefix: str = "rule_") -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in d.items()}


def contamination_figures(
    model: Any, scores: pl.DataFrame, fault_labels: pl.DataFrame, batches: pl.DataFrame
) -> dict[str, float]:
    """The contamination detector's rule on held-out windows (``score()`` output): good =
    batches without any ground-truth fault; faulty = contaminated batches (onset = the
    contamination's), detected no later than the batch end. Also the share of
    non-contaminated batches with a confirmed alarm (other faults alarm too)."""
    rule = rule_of(model, CONTAMINATION_DEFAULT)
    scored = set(scores["batch_id"].unique().to_list())
    faulted = set(fault_labels.filter(pl.col("batch_id").is_not_null())["batch_id"].to_list())
    cont = fault_labels.filter(pl.col("fault_type") == "contamination")
    cont_ids = set(cont["batch_id"].drop_nulls().to_list())
    samples = scores.select("batch_id", "window_end_ts", "alarm")
    f = batch_figures(
        samples,
        rule,
        "window_end_ts",
        sorted(scored - faulted),
        cont.select("batch_id", "onset_ts"),
        batches,
    )
    per = batch_any_confirmed(samples, rule, "window_end_ts")
    nonc = per.filter(~pl.col("batch_id").is_in(sorted(cont_ids)))
    f["non_contaminated_batch_alarm_share"] = _share(nonc["confirmed_alarm"])
    return _prefixed(f)


def mspc_figures(
    model: Any, scores: pl.DataFrame, fault_labels: pl.DataFrame, batches: pl.DataFrame
) -> dict[str, float]:
    """MSPC's rule on held-out ``monitor()`` rows: good = batches without any ground-truth
    fault; faulty = batches with one (onset = the first), detected by a confirmed alarm
    whose alarm run started after onset, no later than the batch end."""
    rule = rule_of(model, MSPC_DEFAULT)
    s = mspc_samples(scores, batches)
    scored = set(s["batch_id"].unique().to_list())
    faulted = fault_labels.filter(pl.col("batch_id").is_not_null())
    onsets = faulted.select("batch_id", "onset_ts")
    good = sorted(scored - set(faulted["batch_id"].to_list()))
    return _prefixed(
        batch_figures(s, rule, "hour_end_ts", good, onsets, batches, require_new_run=True)
    )


def mspc_samples(scores: pl.DataFrame, batches: pl.DataFrame) -> pl.DataFrame:
    """``batch_id``, ``hour_end_ts`` (batch start + elapsed hours), ``alarm`` of MSPC rows."""
    return (
        scores.select("batch_id", "elapsed_h", "alarm")
        .join(batches.select("batch_id", "start_ts"), on="batch_id", how="left")
        .select(
            "batch_id",
            hour_end_ts=pl.col("start_ts")
            + pl.duration(seconds=(pl.col("elapsed_h") * 3600).cast(pl.Int64)),
            alarm=pl.col("alarm").fill_null(False),
        )
    )


def confirm_contamination(model: Any, scores: pl.DataFrame) -> pl.DataFrame:
    """``gold/contamination_risk`` rows with ``confirmed_alarm`` under the model's rule."""
    return rule_of(model, CONTAMINATION_DEFAULT).apply(scores, "window_end_ts")


def confirm_mspc(model: Any, table: pl.DataFrame) -> pl.DataFrame:
    """``gold/mspc_scores`` rows (or anything with ``batch_id``, ``elapsed_h``, ``alarm``)
    with ``confirmed_alarm`` under the model's rule (samples in maturity order)."""
    return rule_of(model, MSPC_DEFAULT).apply(table, "elapsed_h")
