"""The status page in a real headless Chromium: sign in with a token, send a prompt from the
playground to a deployment at zero, and watch its replica count go 0 -> 1; create a deployment
through the form (a refused value's message beside its field), watch its health charts move
with a prompt, update it, delete it with the confirmation; no request of the page fails.

Needs Debian's `chromium` and `chromium-driver` (`make system-deps` installs them); skipped
only where they are absent. Screenshots of the page are kept under the tests' tmp dirs; the
one of the management and health views is copied to $WAKEGATE_STATUS_SCREENSHOT when that is
set (docs/status-page.png is made so).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
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
    # The console and the network, to tell that no request of the page failed.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
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
    refused = failures(driver)  # the wrong token's 401, and nothing else
    assert refused and all("401" in f for f in refused), refused

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
    assert failures(driver) == []

    shot = tmp_path / "status-page.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def failures(driver: Any) -> list[str]:
    """Console errors and failed or refused requests since the last call (the logs are
    drained as they are read)."""
    found = [
        f"console: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"
    ]
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.responseReceived":
            response = params["response"]
            if response["status"] >= 400:
                found.append(f"HTTP {response['status']}: {response['url']}")
        elif message["method"] == "Network.loadingFailed" and not params.get("canceled"):
            found.append(f"failed: {params.get('errorText')}")
    return found


def click(driver: Any, selector: str) -> bool:
    """Click what `selector` finds (cards are redrawn every refresh: wait_until retries)."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, selector).click()
    return True


def fill(driver: Any, name: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.CSS_SELECTOR, f'[name="{name}"]')
    field.clear()
    field.send_keys(value)


def heights(driver: Any, selector: str) -> list[float]:
    """The y coordinates of a chart line's points (the path's "x,y" pairs)."""
    from selenium.webdriver.common.by import By

    d = driver.find_element(By.CSS_SELECTOR, selector).get_attribute("d")
    return [float(y) for y in re.findall(r"[\d.]+,([\d.]+)", d)]


def field_error(driver: Any, name: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, f'[data-error-for="{name}"]').text)


def test_the_page_creates_a_deployment_shows_its_health_updates_and_deletes_it(
    page_stack: Stack, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    stack, driver = page_stack, browser
    name = "form-llm"
    card = f'section.deployment[data-name="{name}"]'
    driver.get(f"{stack.base}/ui")
    driver.find_element(By.ID, "token").send_keys(stack.token)
    driver.find_element(By.ID, "login-button").click()
    wait_until(lambda: text_of(driver, "tenant") == f"tenant {stack.tenant}", 15, "signed in")

    # The form's fields are the API's (every ConfigUpdate field of /openapi.json).
    driver.find_element(By.ID, "new-deployment").click()
    wait_until(
        lambda: driver.find_elements(By.CSS_SELECTOR, '[name="config.baseModel"]'), 10, "fields"
    )
    schema = httpx.get(f"{stack.base}/openapi.json").json()
    documented = set(schema["components"]["schemas"]["ConfigUpdate"]["properties"])
    shown = {
        e.get_attribute("name").removeprefix("config.")
        for e in driver.find_elements(By.CSS_SELECTOR, '#deploy-form [name^="config."]')
    }
    assert shown == documented
    assert failures(driver) == []  # the page, its files, its icon, the schema: all answered
    icon = httpx.get(f"{stack.base}/ui/favicon.svg")  # linked: no /favicon.ico (a 401)
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"

    fill(driver, "name", name)
    fill(driver, "config.baseModel", "sim-llm")
    fill(driver, "config.customArgs", "--load-s\n1\n--ttft-s\n0.05\n--tps\n50")
    fill(driver, "config.minReplicas", "0")
    fill(driver, "config.maxReplicas", "5000")
    fill(driver, "config.cooldownTime", "600")
    driver.find_element(By.ID, "deploy-submit").click()
    # The API refuses it, and its message stands beside the field it names.
    wait_until(lambda: field_error(driver, "config.maxReplicas"), 10, "the refusal's message")
    assert "less than or equal to 1000" in field_error(driver, "config.maxReplicas")
    assert field_error(driver, "config.minReplicas") == ""
    refused = failures(driver)
    assert len(refused) == 2 and all("/v2/deployments" in f or "400" in f for f in refused), (
        refused  # the 400 itself, and the console's line about it
    )
    fill(driver, "config.maxReplicas", "1")
    driver.find_element(By.ID, "deploy-submit").click()
    wait_until(lambda: stat(driver, name, "ready") == "0", 15, "the new deployment's card")
    assert driver.find_element(By.ID, "deploy-form").is_displayed() is False
    created = stack.api("GET", f"/v2/deployments/{name}").json()["data"]["config"]
    assert created["maxReplicas"] == 1 and created["customArgs"][:2] == ["--load-s", "1"]

    # Its health, before and after a prompt from the playground.
    wait_until(lambda: click(driver, card + " button.show-health"), 10, "the health button")
    totals = driver.find_element(By.ID, "health-totals")
    wait_until(lambda: totals.get_attribute("data-requests") == "0", 10, "an empty health view")
    rate = '[data-chart="requests"] [data-series="requestsPerS"]'
    assert len(set(heights(driver, rate))) == 1  # flat: no request yet
    # Nothing measured yet: no time to first token to draw.
    assert driver.find_elements(By.CSS_SELECTOR, '[data-series="ttftP95S"]') == []
    Select(driver.find_element(By.ID, "pg-deployment")).select_by_value(name)
    max_tokens = driver.find_element(By.ID, "pg-max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("8")
    driver.find_element(By.ID, "pg-send").click()
    wait_until(lambda: text_of(driver, "pg-state") == "done", 60, "the completion")
    assert text_of(driver, "pg-output").strip() == " ".join(["tok"] * 8)
    wait_until(lambda: totals.get_attribute("data-requests") == "1", 15, "the request counted")
    # The requests/s line left zero (the charts are redrawn with every refresh).
    assert len(set(heights(driver, rate))) > 1
    assert totals.get_attribute("data-tokens") == "8"
    assert totals.get_attribute("data-cold-starts") == "1"
    # Two warm prompts more, and a shorter window: the same counts, drawn over 5 minutes.
    for _ in range(2):
        driver.find_element(By.ID, "pg-send").click()
        wait_until(lambda: text_of(driver, "pg-cold") == "no", 15, "a warm send")
        wait_until(lambda: text_of(driver, "pg-state") == "done", 30, "the warm completion")
    Select(driver.find_element(By.ID, "health-window")).select_by_value("300")
    wait_until(lambda: totals.get_attribute("data-requests") == "3", 15, "three requests")
    assert totals.text.startswith("5 min: 3 requests (0 failed) · 24 tokens"), totals.text
    assert totals.get_attribute("data-cold-starts") == "1"
    for chart, series in [
        ("requests", "requestsPerS"),
        ("tokens", "tokensPerS"),
        ("ttft", "ttftP95S"),
        ("queue-wait", "queueWaitP95S"),
        ("cold-starts", "coldStartMeanS"),
    ]:
        lines = driver.find_elements(
            By.CSS_SELECTOR, f'svg[data-chart="{chart}"] [data-series="{series}"]'
        )
        assert len(lines) == 1, chart
    assert driver.find_elements(By.CSS_SELECTOR, 'svg[data-chart="cold-starts"] rect.bar')
    replicas = 'svg[data-chart="replicas"]'
    wait_until(
        lambda: driver.find_element(By.CSS_SELECTOR, replicas).get_attribute("data-ready") == "1",
        15,
        "one ready replica on the replicas chart",
    )
    assert driver.find_elements(By.CSS_SELECTOR, replicas + ' [data-series="ready"]')

    # Update through the same form: its fields hold the deployment's values.
    wait_until(lambda: click(driver, card + " button.edit"), 10, "the edit button")
    max_replicas = driver.find_element(By.CSS_SELECTOR, '[name="config.maxReplicas"]')
    wait_until(lambda: max_replicas.get_attribute("value") == "1", 10, "the form filled")
    fill(driver, "config.maxReplicas", "2")
    driver.find_element(By.ID, "deploy-submit").click()
    wait_until(
        lambda: "0\N{EN DASH}2 replicas" in driver.find_element(By.CSS_SELECTOR, card).text,
        15,
        "the update on the card",
    )
    assert stack.api("GET", f"/v2/deployments/{name}").json()["data"]["config"]["maxReplicas"] == 2

    # The screenshot: the form (open on it again) and its health, the whole page tall.
    wait_until(lambda: click(driver, card + " button.edit"), 10, "the edit button")
    wait_until(lambda: max_replicas.get_attribute("value") == "2", 10, "the form filled")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(1400, int(height) + 40))
    driver.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "status-page.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if target := os.environ.get("WAKEGATE_STATUS_SCREENSHOT"):
        shutil.copyfile(shot, target)
    driver.find_element(By.ID, "deploy-cancel").click()

    # Delete, confirmed in a dialog: the card goes, and so does its health view.
    wait_until(lambda: click(driver, card + " button.delete"), 10, "the delete button")
    assert driver.find_element(By.ID, "confirm-delete").is_displayed()
    assert text_of(driver, "confirm-name") == name
    driver.find_element(By.ID, "confirm-yes").click()
    wait_until(lambda: not driver.find_elements(By.CSS_SELECTOR, card), 60, "the card gone")
    assert not driver.find_element(By.ID, "health").is_displayed()
    assert stack.api("GET", f"/v2/deployments/{name}").status_code == 404
    assert failures(driver) == []
