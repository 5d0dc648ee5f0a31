"""The Live page in headless Chromium against a real gateway API: values pushed over the
WebSocket appear without a reload, a PAR crossing shows in the alarm list, and the banner
turns red when the gateway goes away. The page's own receive-minus-hot-store times are
written to ``PHARMA_TEST_ARTIFACTS/live_latency.json`` (figures, not assertions)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pharma_assets.lake.storage import Lake

from .conftest import PASSWORDS
from .live_gateway import SPEC, LiveGateway
from .test_browser import ARTIFACTS, CHROMEDRIVER, CHROMIUM, browser, streamlit_app  # noqa: F401

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)",
)
TAG = "temperature_c"


@pytest.fixture(scope="module")
def gateway(fixture_lake: Lake, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    dst = tmp_path_factory.mktemp("live_lake") / "lake"
    shutil.copytree(fixture_lake.root, dst)
    g = LiveGateway(Lake.at(dst)).start()
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def live_server(gateway: LiveGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from streamlit_app(
        gateway.lake.root, tmp_path_factory.mktemp("streamlit_live"), PHARMA_GATEWAY_URL=gateway.url
    )


def test_live_values_alarm_and_disconnect_in_a_browser(live_server, browser, gateway) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{live_server}/live")
    wait = WebDriverWait(browser, 90)
    user = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, 'input[aria-label="User ID"]'))
    )
    user.send_keys("view.only")
    pw = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, 'input[aria-label="Password"]'))
    )
    pw.send_keys(PASSWORDS["view.only"])
    browser.find_element(By.XPATH, '//button[.//p[text()="Log in"]]').click()
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Live"))
    frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
    browser.switch_to.frame(frame)
    # the values put when the gateway started are older than stale_after_s by now
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "STALE"))
    cell = f'td[data-unit="BR01"][data-tag="{TAG}"]'
    # values pushed after the page loaded appear without a reload
    lat: list[float] = []
    for i in range(10):
        v = 33.0 + i / 1000
        gateway.put("BR01", {TAG: v})
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, cell), f"{v:.3f}"))
        meta = browser.find_element(By.ID, "meta")
        lat.append(float(meta.get_attribute("data-lat-ms").split(",")[-1]))
        time.sleep(0.3)
    assert browser.find_element(By.CSS_SELECTOR, cell).get_attribute("class") == "nor"
    assert browser.find_element(By.ID, "status").text.startswith("LIVE")
    lim = SPEC.tags[TAG].limits("production")
    assert lim.par is not None
    gateway.put("BR01", {TAG: lim.par[1] + 1.0})
    wait.until(ec.text_to_be_present_in_element((By.ID, "alarms"), "temperature_c"))
    assert "out-par" in browser.find_element(By.CSS_SELECTOR, cell).get_attribute("class")
    assert "high" in browser.find_element(By.CSS_SELECTOR, "#alarms .alarm-row").text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lat.sort()
    (ARTIFACTS / "live_latency.json").write_text(json.dumps({"hotstore_to_page_ms": lat}))
    browser.save_screenshot(str(ARTIFACTS / "live.png"))
    assert gateway.server is not None
    gateway.server.should_exit = True  # the gateway goes away: the banner says so
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "DISCONNECTED"))
    browser.switch_to.default_content()
