"""The placeholder dashboard reports what the landing zone holds (AppTest)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")


def test_counts_batches_in_landing(tmp_path, monkeypatch):
    for b in ("BR01-B0001", "BR01-B0002", "BR02-B0001"):
        (tmp_path / "telemetry" / b[:4] / b).mkdir(parents=True)
    monkeypatch.setenv("PHARMA_LANDING_DIR", str(tmp_path))
    at = AppTest.from_file(APP).run(timeout=30)
    assert not at.exception
    assert at.metric[0].value == "3"


def test_empty_landing_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PHARMA_LANDING_DIR", str(tmp_path / "nothing"))
    at = AppTest.from_file(APP).run(timeout=30)
    assert not at.exception
    assert "make demo" in at.info[0].value
