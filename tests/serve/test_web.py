"""The chat page at / in a real browser: Debian's headless Chromium, driven by Selenium, against the real API server.

It loads, streams an answer that grows over several reads and ends as the API's own answer does, shows tokens/s and
the finish reason, stops generating (on the server too) when Stop is pressed, resets, sends the API key, and shows a
full queue (429) and a context overflow (400) in words. CI installs the browser (.ci/run, make install-browser).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.serve.live_server import LONG, TIMEOUT_S, LiveServer, open_stream, serve
from utils.benchmarks.web import CHROMIUM_FLAGS  # headless, and quiet on a closed network
from utils.lm.loading import LoadedModel, load_model

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium: make install-browser")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
POLL_S = 0.02
PROMPT = "Tell me a story about a fox."

pytestmark = [pytest.mark.usefixtures("one_cpu_thread"),
              pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                 reason="Debian's chromium and chromium-driver: make install-browser")]


@pytest.fixture(scope="module")
def loaded(serve_model_dir: Path) -> LoadedModel:
    return load_model(serve_model_dir)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(serve_model_dir: Path, loaded: LoadedModel) -> Iterator[LiveServer]:
    with serve(serve_model_dir, loaded) as live:
        live.wait_until(lambda: live.state.generator is not None, "the model")
        yield live


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_S)
    return value


def open_page(browser: Any, live: LiveServer) -> None:
    browser.get(live.url + "/")
    wait_for(lambda: browser.find_element(By.ID, "status").get_attribute("class") == "ok", "the page to connect")


def settle(browser: Any, max_tokens: int, temperature: float = 0.0) -> None:
    for element_id, value in (("temperature", temperature), ("max-tokens", max_tokens)):
        field = browser.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(str(value))


def send(browser: Any, text: str = PROMPT) -> Any:
    """Type and send a message; returns the assistant bubble it opens."""
    before = len(browser.find_elements(By.CSS_SELECTOR, ".message.assistant"))
    browser.find_element(By.ID, "prompt").send_keys(text)
    browser.find_element(By.ID, "send").click()
    return wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".message.assistant")[before:], "a reply")[0]


def text_of(bubble: Any) -> str:
    return bubble.find_element(By.CSS_SELECTOR, ".content").get_attribute("textContent")


def finished(bubble: Any) -> str | None:
    return bubble.get_attribute("data-finish")


def api_answer(live: LiveServer, messages: list[dict[str, str]], max_tokens: int) -> str:
    with httpx.Client(base_url=live.url, timeout=TIMEOUT_S) as http:
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0}
        return http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]


def test_an_answer_streams_in_and_ends_as_the_apis_own(browser: Any, server: LiveServer) -> None:
    open_page(browser, server)
    settle(browser, max_tokens=LONG)
    bubble = send(browser)
    lengths = []
    while finished(bubble) is None:  # read the page while it streams
        lengths.append(len(text_of(bubble)))
        time.sleep(POLL_S)
    growing = sorted({n for n in lengths if n > 0})
    assert len(growing) >= 3, f"the text did not grow over several reads: {growing}"
    assert finished(bubble) == "length"
    expected = api_answer(server, [{"role": "user", "content": PROMPT}], LONG)
    assert text_of(bubble) == expected  # every streamed delta rendered, in order, nothing added
    meta = bubble.find_element(By.CSS_SELECTOR, ".meta").text
    assert f"{LONG} tokens" in meta and "tokens/s" in meta and "finish: length" in meta
    # The second turn is sent with the first as history: the page keeps the conversation.
    settle(browser, max_tokens=5)
    second = send(browser, "And then?")
    wait_for(lambda: finished(second), "the second answer")
    history = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": expected},
               {"role": "user", "content": "And then?"}]
    assert text_of(second) == api_answer(server, history, 5)


def test_stop_ends_the_generation_on_the_server_and_reset_clears(browser: Any, server: LiveServer) -> None:
    open_page(browser, server)
    settle(browser, max_tokens=LONG)
    cancelled = server.state.stats["cancelled"]
    bubble = send(browser)
    wait_for(lambda: server.state.slots.running == 1 and text_of(bubble), "the first tokens")
    browser.find_element(By.ID, "stop").click()
    wait_for(lambda: finished(bubble) == "stopped", "the page to show the stop")
    server.wait_until(lambda: server.state.stats["cancelled"] == cancelled + 1, "the server to cancel")
    assert server.state.slots.running == 0
    shown = text_of(bubble)
    assert 0 < len(shown) < len(api_answer(server, [{"role": "user", "content": PROMPT}], LONG))
    assert "finish: stopped" in bubble.find_element(By.CSS_SELECTOR, ".meta").text
    assert browser.find_element(By.ID, "send").is_enabled()
    browser.find_element(By.ID, "reset").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".message") == []


def test_a_full_queue_and_a_context_overflow_are_told_in_words(browser: Any, serve_model_dir: Path,
                                                              loaded: LoadedModel) -> None:
    with serve(serve_model_dir, loaded, max_concurrent=1, max_queue=0) as live, \
            httpx.Client(base_url=live.url, timeout=TIMEOUT_S) as http:
        live.wait_until(lambda: live.state.generator is not None, "the model")
        open_page(browser, live)
        settle(browser, max_tokens=8)
        with open_stream(http):  # another client holds the only slot
            busy = send(browser)
            wait_for(lambda: finished(busy) == "error", "the 429")
        assert "server is busy" in text_of(busy) and "queue is full" in text_of(busy)
        assert "error" in busy.get_attribute("class")
        live.wait_until(lambda: live.state.slots.running == 0, "the slot to free")
        settle(browser, max_tokens=5000)  # beyond the 2,048-token context
        overflow = send(browser)
        wait_for(lambda: finished(overflow) == "error", "the 400")
        assert "maximum context length is 2048 tokens" in text_of(overflow)
        settle(browser, max_tokens=4)  # the refused turns were dropped: the next one is answered
        answered = send(browser)
        wait_for(lambda: finished(answered) == "length", "an answer")
        assert text_of(answered) == api_answer(live, [{"role": "user", "content": PROMPT}], 4)


def test_the_page_asks_for_and_sends_the_api_key(browser: Any, serve_model_dir: Path, loaded: LoadedModel) -> None:
    key = "s3cret-key"
    with serve(serve_model_dir, loaded, api_key=key) as live:
        live.wait_until(lambda: live.state.generator is not None, "the model")
        open_page(browser, live)
        settle(browser, max_tokens=4)
        box = browser.find_element(By.ID, "api-key")
        assert box.is_displayed()
        box.clear()
        box.send_keys("wrong")
        refused = send(browser)
        wait_for(lambda: finished(refused) == "error", "the 401")
        assert "needs an API key" in text_of(refused)
        box.clear()
        box.send_keys(key)
        answered = send(browser)
        wait_for(lambda: finished(answered) == "length", "an answer")
        assert len(text_of(answered)) > 0
