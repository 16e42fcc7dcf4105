"""The chat page's latency for make bench-serve: Send to the first rendered token, in Debian's headless Chromium
driven by Selenium against the benchmark's own server, beside the API's TTFT measured by the same run.

Optional: without chromium, chromedriver or selenium (make install-browser) the row is left out and the report says
why. The browser runs on the same CPUs as the server, as it would on a person's machine.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

from utils.core.errors import DataError

# Headless, and quiet on a closed network: without the background-networking flags Chromium keeps dialling out.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync")
PAGE_TIMEOUT_S = 120.0
POLL_S = 0.01


def browser_missing() -> str | None:
    """Why the page cannot be measured here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make install-browser)"
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    return f"{' and '.join(missing)} not found (make install-browser)" if missing else None


def _driver(profile: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def _wait(condition: Any, what: str) -> Any:
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise DataError(f"the chat page did not show {what} within {PAGE_TIMEOUT_S:g} s")
        time.sleep(POLL_S)
    return value


def _set(driver: Any, element_id: str, value: object) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(value))


def page_samples(url: str, prompt: str, max_tokens: int, runs: int) -> list[tuple[float, float, int]]:
    """(seconds Send -> first rendered token, seconds of the rest of the stream, tokens) per run, after a warm-up."""
    from selenium.webdriver.common.by import By

    with tempfile.TemporaryDirectory(prefix="lumi-bench-chromium-") as profile:
        driver = _driver(profile)
        try:
            driver.get(url + "/")
            _wait(lambda: driver.find_element(By.ID, "status").get_attribute("class") == "ok", "a connection")
            _set(driver, "temperature", 0)
            _set(driver, "max-tokens", max_tokens)
            samples = []
            for index in range(runs + 1):
                driver.find_element(By.ID, "reset").click()
                driver.find_element(By.ID, "prompt").send_keys(prompt)
                driver.find_element(By.ID, "send").click()
                box = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, ".message.assistant"), "an answer")[0]
                _wait(lambda: box.get_attribute("data-finish"), "the end of the answer")
                if box.get_attribute("data-finish") == "error":
                    raise DataError(f"the chat page showed an error: {box.text[:300]}")
                if index:  # the first run warms the page and the server up
                    samples.append((float(box.get_attribute("data-ttft-ms")) / 1000,
                                    float(box.get_attribute("data-stream-ms")) / 1000,
                                    int(box.get_attribute("data-tokens"))))
            return samples
        finally:
            driver.quit()
