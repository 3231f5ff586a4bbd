"""`sdlab serve` (issue 18): the playground page driven in headless Chromium, its image checked
against `sdlab generate` run with the command the page shows."""

from __future__ import annotations

import base64
import io
import os
import shlex
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image
from test_evaluate import tiny_pipeline_dir  # noqa: F401 (the tiny SD pipeline fixture)

from sdlab.serve import Playground, make_server


@pytest.fixture
def playground(tiny_pipeline_dir):  # noqa: F811
    server = make_server(Playground(str(tiny_pipeline_dir)), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1000,1300",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()


def fill(driver, name: str, value: str) -> None:
    field = driver.find_element("name", name)
    field.clear()
    field.send_keys(value)


def wait_for_status(driver, timeout_s: float = 120) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout_s).until(lambda d: d.find_element("id", "status").text not in ("", "generating..."))
    return driver.find_element("id", "status").text


def test_the_page_draws_what_sdlab_generate_draws_with_the_command_it_shows(playground, browser, tmp_path):
    from selenium.webdriver.support.ui import Select

    browser.get(playground)
    assert browser.title == "sdlab playground"
    fill(browser, "prompt", "blobhappy emoji with a round head, dot eyes")
    fill(browser, "negative_prompt", "blurry")
    fill(browser, "seed", "7")
    fill(browser, "steps", "3")
    fill(browser, "guidance", "4.5")
    Select(browser.find_element("name", "scheduler")).select_by_value("euler")
    fill(browser, "height", "24")
    browser.find_element("id", "generate").click()
    assert wait_for_status(browser) == "done"
    source = browser.find_element("id", "image").get_attribute("src")
    assert source.startswith("data:image/png;base64,")
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))))
    assert shown.shape == (24, 16, 3)
    screenshot = tmp_path / "playground.png"
    browser.save_screenshot(str(screenshot))
    if os.environ.get("SDLAB_SCREENSHOTS"):  # README's picture: SDLAB_SCREENSHOTS=docs pytest -k playground
        shutil.copy(screenshot, os.path.join(os.environ["SDLAB_SCREENSHOTS"], "playground.png"))

    command = shlex.split(browser.find_element("id", "command").text)
    assert command[:2] == ["sdlab", "generate"] and "--scheduler" in command and "euler" in command
    assert command[command.index("--negative-prompt") + 1] == "blurry"
    command[command.index("--out") + 1] = str(tmp_path / "cli.png")
    result = subprocess.run([sys.executable, "-m", "sdlab.cli", *command[1:]], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli.png")), shown)  # the same pixels

    fill(browser, "seed", "8")  # another seed, another image: the page is not showing a cached one
    browser.find_element("id", "generate").click()
    wait_for_status(browser)
    other = browser.find_element("id", "image").get_attribute("src")
    assert other != source


def test_bad_settings_are_shown_on_the_page_and_draw_nothing(playground, browser):
    browser.get(playground)
    fill(browser, "prompt", "a blob")
    fill(browser, "steps", "0")
    browser.find_element("id", "generate").click()
    assert wait_for_status(browser) == "steps: must be at least 1, got 0"
    assert browser.find_element("id", "image").get_attribute("src") in ("", None)
    fill(browser, "steps", "3")
    fill(browser, "width", "18")
    browser.find_element("id", "generate").click()
    assert wait_for_status(browser) == "width: must be a positive multiple of 4, got 18"
