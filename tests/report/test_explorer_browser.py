"""End to end: the explorer page in a real browser (Debian's chromium, driven by Playwright).

Without playwright or chromium the test is skipped with the reason, unless
``BETAVAE_REQUIRE_SERVICES=1`` (CI), where it fails instead.
"""

import json
import os
import threading
from pathlib import Path

import pytest

from betavae.report.explorer import Explorer, make_server

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _unavailable(reason: str) -> None:
    if os.environ.get("BETAVAE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (BETAVAE_REQUIRE_SERVICES=1 requires it)")
    pytest.skip(reason)


@pytest.fixture
def browser_page(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM.is_file():
        _unavailable(f"no browser at {CHROMIUM} (apt-get install chromium)")
    profile = tmp_path / "profile"
    profile.mkdir()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(str(profile), executable_path=str(CHROMIUM),
                                                                headless=True, args=ARGS,
                                                                viewport={"width": 1100, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()


def test_moving_a_slider_redraws_the_image(beta_run, browser_page, tmp_path):
    server = make_server(Explorer(beta_run), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_function("Number(document.getElementById('decoded').dataset.decodes) >= 1", timeout=30_000)
        info = json.loads(page.evaluate("fetch('/api/info').then(r => r.text())"))
        # one slider per dim, in KL order, collapsed ones marked
        assert page.eval_on_selector_all("#sliders input", "els => els.map(e => Number(e.dataset.dim))") == info["order"]
        assert page.locator(".dim.collapsed").count() == sum(info["collapsed"])
        before = page.get_attribute("#decoded", "src")

        slider = page.locator(f"#z{info['order'][0]}")
        box = slider.bounding_box()
        page.mouse.click(box["x"] + 0.95 * box["width"], box["y"] + box["height"] / 2)
        assert float(slider.input_value()) > 2.0
        page.wait_for_function("(old) => document.getElementById('decoded').src !== old", arg=before, timeout=30_000)
        assert page.text_content("#status") == ""
        page.screenshot(path=str(tmp_path / "explorer-slider.png"), full_page=True)

        # start from a real image: its code goes into the sliders
        page.locator("#picker button").first.click()
        page.wait_for_selector("#chosen:not([hidden])", timeout=30_000)
        index = int(page.locator("#picker button.chosen").get_attribute("data-index"))
        code = json.loads(page.evaluate(f"fetch('/api/encode', {{method: 'POST', body: JSON.stringify({{index: {index}}}),"
                                        "headers: {'Content-Type': 'application/json'}}).then(r => r.text())"))["z"]
        shown = [float(page.locator(f"#z{d}").input_value()) for d in range(info["latents"])]
        assert shown == pytest.approx(code, abs=0.05 + 1e-6)  # slider step 0.05
        page.locator("#random").click()
        page.wait_for_function("(z) => [...document.querySelectorAll('#sliders input')].some("
                               "e => Math.abs(Number(e.value) - z[Number(e.dataset.dim)]) > 0.06)", arg=code)
        page.locator("#reset").click()
        assert [float(page.locator(f"#z{d}").input_value()) for d in range(info["latents"])] == pytest.approx(code, abs=0.051)
        page.screenshot(path=str(tmp_path / "explorer-image.png"), full_page=True)
        assert errors == []
    finally:
        server.shutdown()
        server.server_close()
