"""The status page in a real headless Chromium: sign in with a token, send a prompt from the
playground to a deployment at zero, and watch its replica count go 0 -> 1.

Needs Debian's `chromium` and `chromium-driver` (`make system-deps` installs them); skipped
only where they are absent. A screenshot of the page is kept under the test's tmp dir (and
copied to $WAKEGATE_STATUS_SCREENSHOT when that is set).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import unused_database
from harness import Stack, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromium-driver are not installed"
)

# Load time of the simulated model: the cold start the page measures.
LOAD_S = 1.5


@pytest.fixture(scope="module")
def page_stack(infra: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("page"),
        unused_database(infra),
        infra["mqtt_url"],
        backend="sim",
        sim_pool="a10_24gb=4,cpu=4",
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root (CI does)
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1400",
    ):
        options.add_argument(arg)
    # The Debian driver, never one Selenium would try to download.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def stat(driver: Any, name: str, which: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        card = driver.find_element(By.CSS_SELECTOR, f'section.deployment[data-name="{name}"]')
        return str(card.find_element(By.CSS_SELECTOR, f'[data-stat="{which}"] b').text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""  # the page redraws every refresh


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def test_the_playground_wakes_a_deployment_and_the_page_shows_it(
    page_stack: Stack, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    stack, driver = page_stack, browser
    name = "page-llm"
    stack.create(
        name,
        baseModel="sim-llm",
        customArgs=["--load-s", str(LOAD_S), "--ttft-s", "0.05", "--tps", "50"],
        minReplicas=0,
        maxReplicas=1,
        cooldownTime=600,
    )

    # The page itself needs no token; it asks for one. A wrong one is refused on the page.
    driver.get(f"{stack.base}/ui")
    assert driver.find_element(By.ID, "login").is_displayed()
    driver.find_element(By.ID, "token").send_keys("not-a-token")
    driver.find_element(By.ID, "login-button").click()
    wait_until(lambda: "invalid API token" in text_of(driver, "login-error"), 10, "the refusal")

    driver.find_element(By.ID, "token").send_keys(stack.token)
    driver.find_element(By.ID, "login-button").click()
    wait_until(lambda: stat(driver, name, "ready") == "0", 15, "the deployment at zero")
    assert text_of(driver, "tenant") == f"tenant {stack.tenant}"
    assert driver.execute_script("return sessionStorage.getItem('wakegate.token')") == stack.token

    Select(driver.find_element(By.ID, "pg-deployment")).select_by_value(name)
    assert Select(driver.find_element(By.ID, "pg-model")).first_selected_option.text == "sim-llm"
    prompt = driver.find_element(By.ID, "pg-prompt")
    prompt.clear()
    prompt.send_keys("Tell me about scale to zero")
    max_tokens = driver.find_element(By.ID, "pg-max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("12")
    driver.find_element(By.ID, "pg-send").click()

    # The replica count on the page goes 0 -> 1, and the wake's decision shows with its reason.
    wait_until(lambda: stat(driver, name, "ready") == "1", 60, "one ready replica on the page")
    wait_until(lambda: text_of(driver, "pg-state") == "done", 60, "the streamed completion")
    assert text_of(driver, "pg-output").strip() == " ".join(["tok"] * 12)
    assert text_of(driver, "pg-cold").startswith("yes")
    ttft = re.fullmatch(r"(\d+\.\d\d) s", text_of(driver, "pg-ttft"))
    assert ttft is not None, text_of(driver, "pg-ttft")
    assert float(ttft.group(1)) >= LOAD_S  # it waited for the model to load
    card = f'section.deployment[data-name="{name}"]'
    wait_until(
        lambda: "wake: " in driver.find_element(By.CSS_SELECTOR, card + " .decisions").text,
        15,
        "the wake among the scaling decisions",
    )
    assert "0 → 1" in driver.find_element(By.CSS_SELECTOR, card + " .last-decision").text
    # The chart has its lines.
    paths = driver.find_elements(By.CSS_SELECTOR, card + " svg.chart path")
    assert {p.get_attribute("class") for p in paths} >= {
        "replicas",
        "starting",
        "queued",
        "inflight",
    }

    # Warm now: a second prompt is no cold start.
    driver.find_element(By.ID, "pg-send").click()
    wait_until(lambda: text_of(driver, "pg-cold") == "no", 15, "a warm send")
    wait_until(lambda: text_of(driver, "pg-state") == "done", 30, "the warm completion")

    shot = tmp_path / "status-page.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if target := os.environ.get("WAKEGATE_STATUS_SCREENSHOT"):
        shutil.copyfile(shot, target)
