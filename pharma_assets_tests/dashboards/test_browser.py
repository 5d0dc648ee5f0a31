"""A real browser loads every page of the running app: title and a plotly chart render.

Starts ``streamlit run dashboards/app.py`` on a free port against the fixture lake and
drives Debian's headless Chromium through chromedriver (selenium): each page first shows the
login form (no data), the read-only ``view.only`` account logs in through it, then the page
renders. One screenshot per page goes to ``PHARMA_TEST_ARTIFACTS`` (default
``.state/test-artifacts/dashboards/``).
Skips only when chromium or chromedriver is not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboards.app_pages import PAGES

from .conftest import PASSWORDS

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(
    os.environ.get("PHARMA_TEST_ARTIFACTS", ROOT / ".state" / "test-artifacts" / "dashboards")
)

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def streamlit_app(lake_root: Path, log_dir: Path, **env_extra: str) -> Iterator[str]:
    """``streamlit run dashboards/app.py`` on a free port against ``lake_root``; yields its URL."""
    port = _free_port()
    log = log_dir / "streamlit.log"
    env = {
        **os.environ,
        "PHARMA_LAKE_URI": str(lake_root),
        "PHARMA_MLFLOW_URI": f"sqlite:///{log.parent / 'mlflow.db'}",
        **env_extra,
    }
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "dashboards" / "app.py"),
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(fixture_lake, tmp_path_factory) -> Iterator[str]:
    yield from streamlit_app(fixture_lake.root, tmp_path_factory.mktemp("streamlit"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1440,2200",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


# the Live page draws on canvas from the gateway's push, not plotly: test_live_browser.py
CHART_PAGES = [p for p in PAGES if p.url_path != "live"]


@pytest.mark.parametrize("page", CHART_PAGES, ids=[p.url_path for p in CHART_PAGES])
def test_page_renders_title_and_chart(server, browser, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    path = "" if page is PAGES[0] else page.url_path
    browser.get(f"{server}/{path}")
    wait = WebDriverWait(browser, 90)
    # a new browser session: the login form, and no chart, before any data
    user = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, 'input[aria-label="User ID"]'))
    )
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]')
    user.send_keys("view.only")
    # the form may still be re-rendering under load: wait for the password field too
    pw = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, 'input[aria-label="Password"]'))
    )
    pw.send_keys(PASSWORDS["view.only"])
    browser.find_element(By.XPATH, '//button[.//p[text()="Log in"]]').click()
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), page.title))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".js-plotly-plot .main-svg")))
    # wait until the script run is over (no running indicator), then for plotly to draw
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'))
    time.sleep(1.0)
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    h1 = [e.text for e in browser.find_elements(By.TAG_NAME, "h1")]
    assert any(page.title in t for t in h1), h1
    assert browser.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]')
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{PAGES.index(page) + 1}_{page.url_path}.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
