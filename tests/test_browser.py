"""The report opens in a real browser, offline: headless Chromium shows every image and table
and fetches nothing from the network.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium;
skipped, saying which is missing, elsewhere. Run as a script it takes a screenshot instead:

    python tests/test_browser.py reports/report.html reports/report_screenshot.png
"""
from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = "chromedriver"
NETWORK_SCHEMES = {"http", "https", "ws", "wss", "ftp"}
# headless Chromium in CI: no sandbox (root in CI), no GPU, nothing phoning home
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _find_browser() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or a sentence saying what is missing."""
    browser = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = shutil.which(CHROMEDRIVER)
    if browser is None or driver is None:
        return ("headless Chromium is not installed (Debian: apt-get install chromium "
                "chromium-driver; .ci/run does this)")
    return browser, driver


def open_browser(profile: Path, width: int = 1280, height: int = 900):
    """A selenium Chrome driver on the system Chromium, performance log on, fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = _find_browser()
    if isinstance(found, str):
        raise RuntimeError(found)
    browser, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                 "--hide-scrollbars"):
        options.add_argument(flag)
    # every request the page makes is logged as a Network.requestWillBeSent event
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # an explicit driver path: selenium's own driver manager would try to download one
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def requested_urls(driver) -> list[str]:
    """URLs of every request the browser sent, from the Chrome performance log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


IMAGES_STATE = """
return Array.from(document.images).map(img => ({
  src: img.currentSrc.slice(0, 40), complete: img.complete, width: img.naturalWidth}));
"""


def inspect(html: Path) -> dict:
    """Open ``html`` in headless Chromium and report its images, tables and requests."""
    with tempfile.TemporaryDirectory(prefix="vaepipe-chromium-") as profile:
        driver = open_browser(Path(profile))
        try:
            driver.get_log("performance")  # drop the start-up page's events
            driver.get(html.resolve().as_uri())
            driver.execute_script("window.scrollTo(0, document.body.scrollHeight);")
            images = driver.execute_script(IMAGES_STATE)
            return {
                "images": images,
                "tables": driver.execute_script("return document.querySelectorAll('table').length"),
                "resources": driver.execute_script(
                    "return performance.getEntriesByType('resource').map(e => e.name)"),
                "requests": requested_urls(driver),
                "title": driver.title,
            }
        finally:
            driver.quit()


def screenshot(html: Path, out: Path, width: int = 1280, height: int = 900,
               colors: int = 64) -> Path:
    """Save the report's first screen as a small palette PNG (for the README)."""
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="vaepipe-chromium-") as profile:
        driver = open_browser(Path(profile), width, height)
        try:
            driver.get(html.resolve().as_uri())
            png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=colors)
    image.save(out, optimize=True)
    return out


# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_available() -> None:
    found = _find_browser()
    if isinstance(found, str):
        pytest.skip(found)
    pytest.importorskip("selenium", reason="selenium is not installed (requirements.txt)")


def test_report_html_shows_every_image_and_table_offline(browser_available, tmp_path_factory):
    import vizdata

    root = vizdata.built_once(tmp_path_factory)  # the stage run on tiny inputs
    html = root / "reports/report.html"
    figures_written = sorted((root / "reports/figures").glob("*.png"))
    gifs = sorted((root / "reports/sweep").glob("beta_*/latent.gif"))

    state = inspect(html)
    assert state["title"].startswith("VAE report")
    images = state["images"]
    assert len(images) == len(figures_written) + len(gifs) > 20
    broken = [img for img in images if not img["complete"] or img["width"] == 0]
    assert broken == []
    assert all(img["src"].startswith("data:image/") for img in images)
    # the run table, evaluation tables (2 in the fixture), the sweep table, the GIF row
    assert state["tables"] >= 5
    # nothing went to the network: no resource fetched, no request with a network scheme;
    # the page itself (file:) is in the log, so the log does record requests
    assert state["resources"] == []
    assert [u for u in state["requests"] if urlsplit(u).scheme in NETWORK_SCHEMES] == []
    assert html.resolve().as_uri() in state["requests"]


if __name__ == "__main__":
    page, target = map(Path, sys.argv[1:3])
    shot = screenshot(page, target)
    print(f"{shot}: {shot.stat().st_size / 1024:.0f} KB")
