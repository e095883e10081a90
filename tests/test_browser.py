"""End to end in a real headless browser: upload an image, get a prediction, and take a
screenshot of each tab (into $APP_SCREENSHOT_DIR, e.g. docs/ to refresh the README's)."""

import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
TABS = {"augment": "Augmentation", "patches": "Patches", "predict": "Prediction",
        "rollout": "Attention rollout"}
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as .ci/run does")


def test_upload_predict_and_screenshot_each_tab(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    out = Path(os.environ.get("APP_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(app_url)
            page.locator("input[type=file]").first.set_input_files(str(REPO / "examples" / "cat_0003.jpg"))

            page.get_by_role("tab", name=TABS["predict"]).click()
            page.get_by_role("button", name="Classify").click()
            label = page.locator(".output-class")  # the top class of gr.Label
            expect(label).to_have_text(re.compile("airplane|automobile|bird|cat|deer|dog|frog|"
                                                  "horse|ship|truck"), timeout=30_000)
            for name, tab in TABS.items():
                page.get_by_role("tab", name=tab).click()
                # Every tab was filled in by the upload; wait until its pictures arrive.
                panel = page.get_by_role("tabpanel")
                expect(panel.locator("img, .output-class").first).to_be_visible(timeout=30_000)
                page.wait_for_load_state("networkidle")
                page.screenshot(path=out / f"app_{name}.png", full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    for name in TABS:
        assert (out / f"app_{name}.png").stat().st_size > 10_000
