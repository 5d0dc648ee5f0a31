"""The QA workflow end to end on a real processed lake: deviations opened from process events,
investigated and closed with a signature, the batch record reviewed (EBR), the batch released
with a signature, the status visible in gold/batch_summary, and every step in the verified
audit trail."""

from __future__ import annotations

import contextlib
import re
import zlib
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from pharma_assets.compliance import deviations, ebr, release, users
from pharma_assets.compliance.audit import AuditTrail
from pharma_assets.compliance.signatures import sign, signatures_for, verify_signature
from pharma_assets.lake.gold import EXCURSION_SCHEMA
from pharma_assets.lake.storage import Lake

BATCH = "BR01-B0001"


def _add_process_events(lake: Lake) -> None:
    """A major pH excursion in BATCH, a minor one (no deviation) and a contamination alarm in
    another batch, written into the gold tables the way gold/ML would."""
    b = lake.read("gold", "batch_summary")
    assert b is not None
    start = b.filter(pl.col("batch_id") == BATCH)["start_ts"][0]
    other = b.filter(pl.col("batch_id") != BATCH)["batch_id"][0]
    rows = []
    for sev, tag in (("major", "ph"), ("minor", "temperature_c")):
        rows.append(
            {
                "excursion_id": f"{BATCH}-{tag}-x",
                "batch_id": BATCH,
                "unit_id": "BR01",
                "tag": tag,
                "phase": "production",
                "start_ts": start + timedelta(days=5),
                "end_ts": start + timedelta(days=5, hours=1),
                "duration_min": 60.0,
                "minutes_outside_par": 20.0 if sev == "major" else 0.0,
                "peak_value": 7.45,
                "direction": "high",
                "target": 7.0,
                "nor_lo": 6.9,
                "nor_hi": 7.1,
                "par_lo": 6.8,
                "par_hi": 7.3,
                "severity": sev,
                "active": False,
            }
        )
    lake.append("gold", "cpp_excursions", pl.DataFrame(rows, schema=EXCURSION_SCHEMA))
    cr = pl.DataFrame(
        {
            "batch_id": [other, other],
            "unit_id": ["BR02", "BR02"],
            "window_end_ts": [start, start + timedelta(hours=1)],
            "alarm": [True, True],
            "risk": [0.91, 0.95],
        }
    )
    lake.append("gold", "contamination_risk", cr)


def test_auto_open_is_idempotent_and_above_threshold(gold_lake: Lake) -> None:
    _add_process_events(gold_lake)
    opened = deviations.auto_open(gold_lake)
    assert sorted(d.source for d in opened) == ["contamination", "cpp_excursion"]
    assert {d.severity for d in opened} == {"major", "critical"}
    assert deviations.auto_open(gold_lake) == []  # same events: nothing new
    trail = AuditTrail(gold_lake)
    assert trail.read(action="deviation_opened").height == 2


def test_qa_reviews_closes_and_releases_with_signature(users_lake, tmp_path) -> None:
    lake, pw = users_lake
    _add_process_events(lake)
    [dev] = [d for d in deviations.auto_open(lake) if d.batch_id == BATCH]

    session = users.login(lake, "qa.lead", pw["qa.lead"])
    html_path, pdf_path, content = ebr.write_ebr(
        lake, BATCH, tmp_path / "ebr", "qa.lead", session.session_id
    )
    html = html_path.read_text()
    assert BATCH in html and "PENDING QA REVIEW" in html and dev.deviation_id in html
    assert "<polyline" in html and "temperature_c" in html  # CPP trends drawn
    assert pdf_path.read_bytes().startswith(b"%PDF") and pdf_path.stat().st_size > 5000
    assert len(content.cqas) > 5 and content.materials

    with pytest.raises(ValueError, match="deviations not closed"):
        release.decide(lake, BATCH, "released", "qa.lead", pw["qa.lead"], "too early")
    deviations.advance(
        lake,
        dev.deviation_id,
        "pe.smith",
        "start investigation",
        investigation="trend review and probe check",
    )
    deviations.advance(
        lake,
        dev.deviation_id,
        "pe.smith",
        "root cause",
        root_cause="CO2 sparger fouling",
        capa="clean sparger; add PM task",
    )
    review = sign(
        lake,
        "pe.smith",
        pw["pe.smith"],
        "review",
        "batch_record",
        BATCH,
        release.batch_record(lake, BATCH),
        "engineering review",
    )
    assert review.manifestation() in ebr.render_html(ebr.collect(lake, BATCH))
    closed = deviations.close(
        lake, dev.deviation_id, "qa.lead", pw["qa.lead"], "CAPA adequate", session.session_id
    )
    assert closed.state == "closed"
    row = release.decide(
        lake,
        BATCH,
        "released",
        "qa.lead",
        pw["qa.lead"],
        "record reviewed, all CQAs in spec",
        session.session_id,
    )
    assert row["decision"] == "released" and row["printed_name"] == "Quinn Assurance"
    with pytest.raises(ValueError, match="final"):
        release.decide(lake, BATCH, "rejected", "qa.lead", pw["qa.lead"], "changed my mind")

    # status in gold/batch_summary through the join gold uses
    summary = release.apply_release_status(lake.read("gold", "batch_summary"), lake)
    st = dict(zip(summary["batch_id"], summary["release_status"], strict=True))
    assert st[BATCH] == "released"
    assert {v for k, v in st.items() if k != BATCH} == {"pending_review"}
    assert summary.filter(pl.col("batch_id") == BATCH)["released_by"][0] == "Quinn Assurance"

    # the signature is bound to the reviewed record and shown on the EBR
    [sig] = signatures_for(lake, "batch_release", BATCH)
    assert verify_signature(sig, release.batch_record(lake, BATCH), BATCH).ok
    html2 = ebr.render_html(ebr.collect(lake, BATCH))
    assert "RELEASED by Quinn Assurance" in html2 and sig.manifestation() in html2
    assert "meaning: approval" in html2
    _, pdf2, _ = ebr.write_ebr(lake, BATCH, tmp_path / "ebr2", "qa.lead")
    pdf_text = _pdf_strings(pdf2)
    assert "RELEASED by Quinn Assurance" in pdf_text
    assert sig.manifestation().replace("(", "\\(").replace(")", "\\)") in pdf_text

    # every step is in the verified audit trail
    trail = AuditTrail(lake)
    res = trail.verify()
    assert res.ok, res.summary()
    actions = set(trail.read()["action"])
    for a in (
        "login",
        "ebr_generated",
        "deviation_opened",
        "deviation_investigation",
        "deviation_capa",
        "signature_reauth",
        "e_signature",
        "deviation_closed",
        "batch_released",
    ):
        assert a in actions, a
    in_session = trail.read().filter(pl.col("context_id") == session.session_id)
    assert {"login", "ebr_generated", "deviation_closed", "batch_released"} <= set(
        in_session["action"]
    )

    # a later change to the record invalidates the signature shown on the EBR
    deviations.open_deviation(
        lake, "op.jones", "late finding", "found after release", "minor", "late", batch_id=BATCH
    )
    assert not verify_signature(sig, release.batch_record(lake, BATCH), BATCH).ok
    assert "INVALID" in _pdf_text(ebr.collect(lake, BATCH))


def _pdf_strings(path: Path) -> str:
    """Text drawn on the PDF pages (fpdf2 writes deflated content streams)."""
    data = path.read_bytes()
    out = []
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        with contextlib.suppress(zlib.error):
            out += re.findall(rb"\((.*?)\) Tj", zlib.decompress(m.group(1)))
    return " ".join(x.decode("latin-1") for x in out)


def _pdf_text(c: ebr.EbrContent) -> str:
    return "; ".join(("VERIFIED" if ok else "INVALID") + note for _, ok, note in c.signatures)


def test_reject_allowed_with_open_deviation_and_release_needs_qa(users_lake) -> None:
    lake, pw = users_lake
    other = "BR02-B0001"
    deviations.open_deviation(
        lake, "op.jones", "seal leak", "leak", "major", "seen", batch_id=other
    )
    with pytest.raises(users.PermissionDeniedError, match=r"batch\.release"):
        release.decide(lake, other, "rejected", "pe.smith", pw["pe.smith"], "not QA")
    row = release.decide(lake, other, "rejected", "qa.lead", pw["qa.lead"], "seal failure")
    assert row["decision"] == "rejected"
    assert release.release_status_frame(lake)["release_status"].to_list() == ["rejected"]
    assert AuditTrail(lake).read(action="batch_release_refused").height == 1
