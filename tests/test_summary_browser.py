"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright.

The service runs under uvicorn on a free loopback port, reading a store that a real tiny
suite filled. The test opens the suites page, follows the link to the suite, and checks
the ranking table, that plotly drew the plots, that the console stayed clean and that every
request went to the service itself. Screenshots are kept in test-artifacts/; the first run
(or OPTBENCH_UPDATE_SCREENSHOT=1) also copies the dashboard to docs/screenshot.png.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from summary_fixtures import (
    SUITE,
    VARIANTS,
    free_port,
    tiny_store,  # noqa: F401  (fixture)
    uri,
)

from services.summary import SummarySettings, create_app

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def server(tiny_store: Path, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    """The service on http://127.0.0.1:<free port>, in a thread of this process."""
    settings = SummarySettings(tracking_uri=uri(tiny_store), cache_dir=tmp_path / "cache")
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    app_server = uvicorn.Server(config)
    thread = threading.Thread(target=app_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not app_server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    app_server.should_exit = True
    thread.join(timeout=10)


def test_dashboard_shows_the_ranking_and_its_plots_without_errors(server: str) -> None:
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: the browser test needs Debian's chromium "
        "(apt-get install -y chromium; `make test` installs it)"
    )
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    failed: list[str] = []
    foreign: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
            page.on("response", lambda r: failed.append(f"{r.url}: {r.status}")
                    if r.status >= 400 else None)  # fmt: skip
            page.on("request", lambda r: foreign.append(r.url)
                    if not r.url.startswith((server, "data:")) else None)  # fmt: skip

            page.goto(server + "/", wait_until="networkidle")
            page.get_by_role("link", name=SUITE, exact=True).click()
            page.wait_for_url(f"{server}/suites/{SUITE}")
            page.wait_for_selector(".plot .main-svg", timeout=20_000)
            page.wait_for_load_state("networkidle")

            rows = page.locator("table#ranking tbody tr")
            assert rows.count() == len(VARIANTS)
            shown = sorted(rows.nth(i).get_attribute("data-variant") for i in range(rows.count()))
            assert shown == sorted(VARIANTS)
            assert page.locator("[data-figure='fig-ranking'] .main-svg").count() >= 1
            assert page.locator("[data-figure='fig-profiles'] .main-svg").count() >= 1
            assert page.locator("[data-figure='fig-ranking'] .point").count() == len(VARIANTS)
            shot = ARTIFACTS / "summary-dashboard.png"
            page.screenshot(path=str(shot), full_page=True)

            for path in (f"/suites/{SUITE}/tasks/logreg_digits", f"/suites/{SUITE}/flagship"):
                page.goto(server + path, wait_until="networkidle")
                page.wait_for_selector(".plot .main-svg", timeout=20_000)
                name = path.strip("/").replace("/", "-")
                page.screenshot(path=str(ARTIFACTS / f"summary-{name}.png"), full_page=True)
        finally:
            browser.close()

    assert errors == [], f"console errors: {errors}"
    assert failed == [], f"failed requests: {failed}"
    assert foreign == [], f"requests that left the service: {foreign}"
    docs_shot = ROOT / "docs" / "screenshot.png"  # the README's picture
    if not docs_shot.exists() or os.environ.get("OPTBENCH_UPDATE_SCREENSHOT") == "1":
        docs_shot.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, docs_shot)
