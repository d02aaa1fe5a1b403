"""Headless Chromium (Debian's chromium + chromium-driver) driven by selenium, for tests/browser and the
docs screenshot (tests/browser/screenshot.py).

A missing browser skips a test with the command that installs it; under CI it fails the test
(tests/deploy/tools.py), as scripts/install-ci-tools.sh has just installed it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator

from tests.deploy.tools import missing

# No GPU, no sandbox (CI containers run as root), and nothing that talks to Google's services on its own
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1500",
)
TIMEOUT = 60  # seconds a page action may take (an explanation on 2 busy cores)


@contextlib.contextmanager
def chromium() -> Iterator:
    """A fresh headless Chromium (its own profile folder) that records the page's network requests."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium (the dev extra: pip install -e '.[dev]')")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        missing("headless Chromium (Debian packages chromium and chromium-driver)")
    with tempfile.TemporaryDirectory(prefix="bertserve-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        page = webdriver.Chrome(service=Service(driver), options=options)
        page.set_script_timeout(TIMEOUT)
        try:
            yield page
        finally:
            page.quit()


def wait_for(page, condition, timeout: float = TIMEOUT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(page, timeout).until(lambda _: condition())


def open_ui(page, base: str) -> None:
    """Load /ui and wait until its pickers are filled from /v1/models."""
    page.get(f"{base}/ui")
    wait_for(page, lambda: page.find_element("tag name", "body").get_attribute("data-ready") == "true")


def run_tool(page, tool: str, text: str | None = None) -> None:
    """Open a tool's tab, optionally replace its text, press its button and wait for the answer."""
    page.find_element("css selector", f'nav button[data-tool="{tool}"]').click()
    if text is not None:
        box = page.find_element("id", f"{tool}-text")
        box.clear()
        box.send_keys(text)
    page.find_element("id", f"{tool}-run").click()
    wait_for(
        page,
        lambda: (
            page.find_element("id", "error").text or page.find_element("id", f"{tool}-result").is_displayed()
        ),
    )
    assert page.find_element("id", "error").text == ""


def requested_urls(page, origin: str) -> list[str]:
    """Every URL that documents from `origin` asked for since the last call (Chromium's performance log;
    the browser's own start page is left out)."""
    urls = []
    for entry in page.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            params = message["params"]
            if params.get("documentURL", "").startswith(f"{origin}/"):
                urls.append(params["request"]["url"])
    return urls
