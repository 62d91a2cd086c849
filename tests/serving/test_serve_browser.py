"""The chat page in a real browser: Debian's chromium, driven by selenium, types a message and sees the reply
stream in, token by token, through the server's own API."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.serving.serving_parts import API_KEY, Server, save_lightning_ckpt, tiny_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    save_lightning_ckpt(tiny_model(), folder / "last.ckpt")
    srv = Server(f"ckpt_path={folder / 'last.ckpt'}", f"api_key={API_KEY}", log_dir=folder)
    yield srv
    srv.stop()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_chat_page_streams_a_reply(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    # Offline by design: nothing on the page comes from anywhere but this server.
    assert browser.find_elements(By.CSS_SELECTOR, "script[src], link[href], img[src], iframe") == []
    key = browser.find_element(By.ID, "api_key")
    key.send_keys(API_KEY)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    WebDriverWait(browser, 20).until(lambda b: "context 1024 tokens" in b.find_element(By.ID, "model").text)
    for setting, value in (("max_tokens", "400"), ("temperature", "0")):
        field = browser.find_element(By.ID, setting)
        field.clear()
        field.send_keys(value)

    box = browser.find_element(By.ID, "input")
    box.send_keys("Who painted the portrait?")
    box.send_keys(Keys.ENTER)

    reply = lambda b: b.find_elements(By.CSS_SELECTOR, ".message.assistant")  # noqa: E731
    # The reply grows while it streams: its text is seen at several lengths before the note that it finished.
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        messages = reply(browser)
        if messages:
            text = messages[-1].text
            seen.add(len(text))
            if "finished" in text or "stopped at max_tokens" in text:
                break
        time.sleep(0.005)
    user = browser.find_elements(By.CSS_SELECTOR, ".message.user")
    assert [m.text for m in user] == ["Who painted the portrait?"]
    final = reply(browser)[-1].text
    assert "stopped at max_tokens" in final or "finished" in final, final
    assert "prompt +" in final  # the usage line of the last chunk
    assert len([n for n in seen if n > 0]) >= 3, f"no streaming seen: lengths {sorted(seen)}"
    assert server.health()["finished"].get("error", 0) == 0
