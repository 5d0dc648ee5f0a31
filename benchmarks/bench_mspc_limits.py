"""MSPC limits study (issue 14 item 3): which way of fitting the limits holds for later batches.

Held out, the limits fitted on the good training batches alarmed far more good hours than
their own out-of-fold figures promised (11 % against 4-5 % on the 140-batch plant): the
limits did not hold for later batches. This benchmark tries principled variants of the
limit fit and **chooses one on the training period only**:

* ``interleaved`` (the model as it was): out-of-fold folds are every 5th good batch, the
  150 most recent good batches of a recipe;
* ``time_blocked``: the folds are contiguous blocks of start time, so each good batch is
  scored by a model of *other periods* (between-period drift widens the limits);
* ``..._all``: every good training batch of the recipe (no 150 cap).

Choice: the training period is split again by start time (the last 25 % of its finished
batches validate); each variant is fitted on the earlier good batches (its persistence
rule chosen on its own out-of-fold alarms, as in the product) and scored on the later
*good* batches (plant-known: complete and right first time, no ground truth). The chosen
variant is the one with the fewest samples ``k`` in its rule among those whose validation
share of good batches with a confirmed alarm is at most 5 % (if none: the lowest share).
Each variant is also tried with ``+forward_rule``: the same limits, the persistence rule
chosen (same candidates, same 5 % target) on the forward-scored later good training
batches instead of on the out-of-fold alarms. The chosen variant is then fitted on every
good training batch and scored on the held-out batches
(ground truth read for evaluation only). Every variant's held-out figures are printed
too, for transparency; only the chosen one is the model's figure.

    python -m benchmarks.bench_mspc_limits --lake LAKE --truth GROUND_TRUTH [--json OUT]
        [--units BR01,BR02,BR03]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import polars as pl

from pharma_assets.lake.storage import Lake
from pharma_assets.ml import alarm_rules, contamination, features, mspc

VARIANTS: dict[str, dict[str, Any]] = {
    "interleaved": {"time_blocked_folds": False, "max_batches": 150},
    "time_blocked": {"time_blocked_folds": True, "max_batches": 150},
    "interleaved_all": {"time_blocked_folds": False, "max_batches": 100_000},
    "time_blocked_all": {"time_blocked_folds": True, "max_batches": 100_000},
}


def _good_share(model: mspc.MSPCModel, hourly: pl.DataFrame, batches: pl.DataFrame) -> float:
    """Share of the batches in ``hourly`` with any confirmed alarm under the model's rule."""
    sc = mspc.monitor(model, hourly, batches)
    if sc.height == 0:
        return float("nan")
    per = alarm_rules.batch_any_confirmed(
        sc.select("batch_id", "elapsed_h", "alarm"),
        alarm_rules.rule_of(model, alarm_rules.MSPC_DEFAULT),
        "elapsed_h",
    )
    return float(per["confirmed_alarm"].cast(pl.Float64).mean())  # type: ignore[arg-type]


def choose_variant(
    hourly: pl.DataFrame,
    batches: pl.DataFrame,
    batch_summary: pl.DataFrame,
    cutoff: Any,
    variants: dict[str, dict[str, Any]] = VARIANTS,
) -> tuple[str, list[dict[str, Any]]]:
    """The variant chosen on the training period only (batches started before ``cutoff``):
    fitted on its earlier good batches, validated on its later good batches."""
    train_batches = batches.filter(pl.col("start_ts") < cutoff)
    inner, _ = contamination.split_by_start(train_batches)
    fit_ids = mspc.good_batches(batch_summary, before=inner)
    val_ids = sorted(
        set(mspc.good_batches(batch_summary, before=cutoff)) - set(fit_ids)
    )  # good training batches started in [inner, cutoff)
    rows: list[dict[str, Any]] = []
    for name, kw in variants.items():
        t0 = time.perf_counter()
        m = mspc.train(hourly.filter(pl.col("batch_id").is_in(fit_ids)), batches, fit_ids, **kw)
        val_h = hourly.filter(pl.col("batch_id").is_in(val_ids))
        share = _good_share(m, val_h, batches)
        rule = alarm_rules.rule_of(m, alarm_rules.MSPC_DEFAULT)
        common = {
            "n_fit": len(fit_ids),
            "n_validation_good": len(val_ids),
            "seconds": time.perf_counter() - t0,
        }
        rows.append(
            {"variant": name, "rule_k": rule.k, "rule_n": rule.n, "validation_good_share": share}
            | common
        )
        print(f"  validation {name}: {rows[-1]}", flush=True)
        # the same limits with the rule chosen on the forward-scored later good batches
        sc = mspc.monitor(m, val_h, batches).select("batch_id", "elapsed_h", "alarm")
        fwd = alarm_rules.choose_rule(sc, "elapsed_h", sample="hour")
        rows.append(
            {
                "variant": f"{name}+forward_rule",
                "rule_k": fwd.rule.k,
                "rule_n": fwd.rule.n,
                "validation_good_share": fwd.train_good_batch_share,
            }
            | common
        )
        print(f"  validation {name}+forward_rule: {rows[-1]}", flush=True)
    ok = [r for r in rows if r["validation_good_share"] <= alarm_rules.TARGET_GOOD_BATCH_SHARE]
    best = (
        min(ok, key=lambda r: (r["rule_k"], r["validation_good_share"]))
        if ok
        else min(rows, key=lambda r: r["validation_good_share"])
    )
    return str(best["variant"]), rows


def run(lake_dir: Path, truth: Path, units: list[str] | None = None) -> dict[str, Any]:
    lake = Lake.at(lake_dir)
    t0 = time.perf_counter()
    inp = features.load_inputs(lake, with_hourly=False)
    hourly = features.timeline_products(lake).mspc_hourly
    if units:  # e.g. the units a partly built lake holds in full
        hourly = hourly.filter(pl.col("unit_id").is_in(units))
    print(f"inputs read in {time.perf_counter() - t0:.0f} s", flush=True)
    # only batches whose telemetry is in the lake (silver quarantines readings stamped in
    # the future: a simulated history that runs past today has batches without any)
    have = hourly["batch_id"].unique().implode()
    batches = inp.batches.filter(pl.col("batch_id").is_in(have))
    summary = inp.batch_summary.filter(pl.col("batch_id").is_in(have))
    print(f"{batches.height} of {inp.batches.height} batches have telemetry", flush=True)
    labels = pl.read_parquet(truth / "fault_labels.parquet")
    cutoff, n_hold = contamination.split_by_start(batches)
    chosen, validation = choose_variant(hourly, batches, summary, cutoff)
    print(f"chosen on the training period: {chosen}", flush=True)
    good = mspc.good_batches(summary, before=cutoff)
    hold = batches.filter(pl.col("start_ts") >= cutoff)["batch_id"].to_list()
    held: dict[str, dict[str, float]] = {}
    fwd_rules = {
        v["variant"].removesuffix("+forward_rule"): alarm_rules.PersistenceRule(
            v["rule_k"], v["rule_n"], "hour"
        )
        for v in validation
        if v["variant"].endswith("+forward_rule")
    }
    for name in [v["variant"] for v in validation]:
        base = name.removesuffix("+forward_rule")
        if name == base:
            m = mspc.train(
                hourly.filter(pl.col("batch_id").is_in(good)), batches, good, **VARIANTS[base]
            )
            sc = mspc.monitor(m, hourly.filter(pl.col("batch_id").is_in(hold)), batches)
        else:  # same limits as the base variant's final model, the forward-chosen rule
            m = dataclasses.replace(m, alarm_rule=fwd_rules[base].as_dict())
        held[name] = {
            **m.train_summary(),
            **mspc.evaluate(sc, labels, batches),
            **alarm_rules.mspc_figures(m, sc, labels, batches),
        }
        r = held[name]
        print(
            f"  held out {name}: rule {r['rule_alarm_rule_k']:.0f} of {r['rule_alarm_rule_n']:.0f}, "
            f"good with confirmed alarm {100 * r['rule_good_batch_alarm_share']:.1f} % of "
            f"{r['rule_n_good_batches']:.0f}, detected {r['rule_n_faulty_detected']:.0f}/"
            f"{r['rule_n_faulty_batches']:.0f}, median delay "
            f"{r['rule_median_detection_delay_h']:.1f} h, raw good-hour alarm rate "
            f"{100 * r['hour_false_alarm_rate']:.1f} %",
            flush=True,
        )
    return {
        "lake": str(lake.root),
        "n_batches": batches.height,
        "n_held_out": n_hold,
        "n_good_train": len(good),
        "chosen": chosen,
        "validation": validation,
        "held_out": held,
    }


def markdown(r: dict[str, Any]) -> list[str]:
    out = [
        f"{r['n_batches']} batches, {r['n_held_out']} held out (last 25 % by start), "
        f"{r['n_good_train']} good training batches. Chosen on the training period: "
        f"**{r['chosen']}**.",
        "",
        "| variant | validation (training period): rule, good with confirmed alarm | held out: "
        "rule | good batches with a confirmed alarm (≤ 5 %) | faulty detected (≥ 90 %) | "
        "median delay | raw good-hour alarm rate |",
        "|---|---|---|---|---|---|---|",
    ]
    val = {v["variant"]: v for v in r["validation"]}
    for name, h in r["held_out"].items():
        v = val[name]
        mark = " (chosen)" if name == r["chosen"] else ""
        out.append(
            f"| {name}{mark} | {v['rule_k']} of {v['rule_n']} h, "
            f"{100 * v['validation_good_share']:.1f} % of {v['n_validation_good']} | "
            f"{h['rule_alarm_rule_k']:.0f} of {h['rule_alarm_rule_n']:.0f} h | "
            f"{100 * h['rule_good_batch_alarm_share']:.1f} % of {h['rule_n_good_batches']:.0f} | "
            f"{h['rule_n_faulty_detected']:.0f} / {h['rule_n_faulty_batches']:.0f} = "
            f"{100 * h['rule_batch_detection_rate']:.1f} % | "
            f"{h['rule_median_detection_delay_h']:.1f} h | "
            f"{100 * h['hour_false_alarm_rate']:.1f} % |"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lake", type=Path, required=True)
    ap.add_argument("--truth", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--units", default=None, help="comma-separated units to use (default: all)")
    a = ap.parse_args(argv)
    r = run(a.lake, a.truth, a.units.split(",") if a.units else None)
    print("\n".join(markdown(r)))
    if a.json:
        a.json.write_text(json.dumps(r, indent=1, default=str))


if __name__ == "__main__":
    main()
