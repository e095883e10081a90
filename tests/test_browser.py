"""End to end in a real headless browser: an upload gives the answer without a click,
every tab opens, a bad upload after an example gets its message, and a phone sees the
answer before the examples. Screenshots go to $APP_SCREENSHOT_DIR (docs/ refreshes the
README's), else a temporary folder."""

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import unlike_any_class

CHROMIUM = "/usr/bin/chromium"
TABS = {
    "rollout": "Attention rollout",
    "class_map": "Why this class?",
    "mistakes": "Mistakes",
    "comparison": "ViT vs CNN",
    "own": "Your own classes",
    "results": "Results",
    "model": "Model",
    "augment": "Augmentation",
    "patches": "Patches",
}
REPO = Path(__file__).resolve().parent.parent
CAT = str(REPO / "examples" / "cat_0003.jpg")
DOG = str(REPO / "examples" / "dog_0003.jpg")  # 90% dog, 87% with its mirror image: the flip shows
A_CLASS = re.compile("airplane|automobile|bird|cat|deer|dog|frog|horse|ship|truck")
WAIT_MS = 60_000  # generous: the machine may be shared with a training run

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as .ci/run does",
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    out = Path(os.environ.get("APP_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def open_page(browser, url, width, height):
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    return page, errors


def upload_and_wait_for_the_answer(page, path=CAT):
    from playwright.sync_api import expect

    page.locator("#photo input[type=file]").set_input_files(path)
    expect(page.locator("#label .output-class")).to_have_text(A_CLASS, timeout=WAIT_MS)
    expect(page.locator("#seen img")).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text(re.compile("the ViT's top class"))).to_be_visible(timeout=WAIT_MS)


def open_tab(page, name):
    tab = page.get_by_role("tab", name=name, exact=True)
    if not tab.is_visible():  # a narrow screen keeps the last tabs behind a menu
        page.get_by_role("button", name="More tabs").click()
        tab = page.locator(".overflow-dropdown button", has_text=re.compile(f"^{name}$"))
    tab.click()


def test_upload_answers_at_once_and_every_tab_opens(browser, app_url, screenshots):
    from playwright.sync_api import expect

    page, errors = open_page(browser, app_url, 1280, 900)
    expect(page.get_by_text("Validation accuracy")).to_be_visible(timeout=WAIT_MS)
    assert page.get_by_role("button", name=re.compile("Classify|Explain|Augment|Slice")).count() == 0
    upload_and_wait_for_the_answer(page)
    for name, tab in TABS.items():
        open_tab(page, tab)
        panel = page.get_by_role("tabpanel")
        wanted = {
            "rollout": "#blocks img",
            "class_map": "#cnn-class-map img",  # the CNN's beside the ViT's
            "mistakes": "#mistakes img",
            "comparison": "#comparison table",
            "own": "textarea",
            "results": "img",
            "model": "img" if shutil.which("dot") else "pre",
            "augment": "img",
            "patches": "img",
        }[name]  # without graphviz the Model tab has no graph
        expect(panel.locator(wanted).first).to_be_visible(timeout=WAIT_MS)
        if name == "class_map":
            expect(panel.locator("#class-map img").first).to_be_visible(timeout=WAIT_MS)
        if name == "mistakes":
            page.get_by_label("True class").click()
            page.get_by_role("option", name="cat", exact=True).click()
            expect(panel.locator("#mistakes .caption-label").first).to_have_text(re.compile("^cat → "), timeout=WAIT_MS)
            page.get_by_role("radio", name="CNN", exact=True).check()  # the CNN's, with its maps
            expect(panel.get_by_text(re.compile("^The CNN gets"))).to_be_visible(timeout=WAIT_MS)
            expect(panel.locator("#cnn-mistakes .caption-label").first).to_have_text(
                re.compile("^cat → "), timeout=WAIT_MS
            )
        page.screenshot(path=screenshots / f"app_{name}.png", full_page=True)
    assert not errors, errors
    for name in TABS:
        assert (screenshots / f"app_{name}.png").stat().st_size > 10_000


def test_a_bad_upload_after_an_example_gets_its_message(browser, app_url, tmp_path):
    from playwright.sync_api import expect

    page, errors = open_page(browser, app_url, 1280, 900)
    page.locator(".gallery-item, button.gallery").first.click()  # an example
    expect(page.locator("#label .output-class")).to_have_text(A_CLASS, timeout=WAIT_MS)
    (tmp_path / "notes.png").write_text("not an image")
    page.locator("#photo input[type=file]").set_input_files(tmp_path / "notes.png")
    expect(page.get_by_text(re.compile("Unsupported format: this app reads"))).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text(re.compile("Unsupported format"))).to_have_count(1)  # one message
    assert_no_answer_shown(page)  # the example's answers went with it
    assert not errors, errors


def assert_no_answer_shown(page):
    from playwright.sync_api import expect

    for answer in ("#label .output-class", "#cnn-label .output-class", "#seen img", "#verdict p", "#cam img"):
        expect(page.locator(answer)).to_have_count(0, timeout=WAIT_MS)
    expect(page.get_by_text(re.compile("^Explaining "))).to_have_count(0)


def test_both_models_answer_side_by_side_and_clearing_clears_every_answer(browser, app_url):
    from playwright.sync_api import expect

    page, errors = open_page(browser, app_url, 1280, 900)
    upload_and_wait_for_the_answer(page)
    expect(page.locator("#cnn-label .output-class")).to_have_text(A_CLASS, timeout=WAIT_MS)
    expect(page.locator("#cam img")).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text(re.compile("the CNN's top class: where its last features vote"))).to_be_visible()
    expect(page.locator("#verdict")).to_contain_text(re.compile("ViT: .*CNN: ", re.S), timeout=WAIT_MS)
    page.locator("#photo button[aria-label='Remove Image']").click()
    assert_no_answer_shown(page)
    expect(page.get_by_text("Error", exact=True)).to_have_count(0)
    assert not errors, errors


def test_a_photo_of_none_of_the_classes_is_flagged(browser, app_url, tmp_path):
    from playwright.sync_api import expect

    page, errors = open_page(browser, app_url, 1280, 900)
    page.locator("#photo input[type=file]").set_input_files(unlike_any_class(tmp_path))
    expect(page.locator("#verdict")).to_contain_text(
        re.compile("does not look like any of the 10 classes to the two models together; the closest is"),
        timeout=WAIT_MS,
    )
    assert not errors, errors


def test_a_phone_sees_the_answer_before_the_examples(browser, app_url, screenshots):
    page, errors = open_page(browser, app_url, 390, 844)
    upload_and_wait_for_the_answer(page)
    answer = page.locator("#label .output-class").bounding_box()
    examples = page.get_by_text("Examples: CIFAR-10 validation images").bounding_box()
    assert answer["y"] + answer["height"] < examples["y"]
    assert answer["y"] < 844  # on the first screen, no scrolling needed
    page.screenshot(path=screenshots / "app_phone.png", full_page=False)
    open_tab(page, "Model")
    assert not errors, errors


def test_a_control_answers_in_its_own_tab_and_says_nothing_before_an_upload(browser, app_url):
    from playwright.sync_api import expect

    page, errors = open_page(browser, app_url, 1280, 900)
    expect(page.get_by_text("Validation accuracy")).to_be_visible(timeout=WAIT_MS)
    page.get_by_role("checkbox", name=re.compile("Flip TTA")).check()  # no image yet: no message either
    open_tab(page, "Patches")
    page.get_by_role("radio", name="8", exact=True).check()
    page.wait_for_timeout(2000)
    expect(page.get_by_text("No image:")).to_have_count(0)
    upload_and_wait_for_the_answer(page, DOG)  # with the flip switched on
    open_tab(page, "Patches")
    expect(page.get_by_text("16 patches of 8x8")).to_be_visible(timeout=WAIT_MS)
    page.get_by_role("radio", name="16", exact=True).check()
    expect(page.get_by_text("4 patches of 16x16")).to_be_visible(timeout=WAIT_MS)
    flipped = page.locator("#label").inner_text()  # the top 5 of the image and its mirror
    page.get_by_role("checkbox", name=re.compile("Flip TTA")).uncheck()
    expect(page.locator("#label")).not_to_have_text(flipped, timeout=WAIT_MS)
    expect(page.locator("#label .output-class")).to_have_text(A_CLASS)
    assert not errors, errors


def test_a_visitor_trains_their_own_classes_and_later_photos_are_answered(browser, app_url, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect

    groups = []
    for name, colour in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        paths = []
        for i in range(5):
            path = tmp_path / f"{name}{i}.png"
            Image.new("RGB", (32, 32), tuple(c + 5 * i for c in colour)).save(path)
            paths.append(str(path))
        groups.append(paths)
    page, errors = open_page(browser, app_url, 1280, 900)
    expect(page.get_by_role("tab", name="Attention rollout")).to_be_visible(timeout=WAIT_MS)
    open_tab(page, "Your own classes")
    page.get_by_label("Class names, comma-separated").fill("red, blue")
    for k, paths in enumerate(groups):
        page.locator(f"#own-files-{k + 1} input[type=file]").set_input_files(paths)
    page.get_by_role("button", name="Train my classifier").click()
    expect(page.get_by_text("Trained on the ViT's features of 10 photos in 2 classes")).to_be_visible(timeout=WAIT_MS)
    page.locator("#photo input[type=file]").set_input_files(groups[1][0])
    expect(page.locator("#own-label .output-class")).to_have_text("blue", timeout=WAIT_MS)
    expect(page.locator("#own-map img")).to_be_visible(timeout=WAIT_MS)  # with its map, explained
    expect(page.get_by_text("Why blue, your classifier's top class?")).to_be_visible(timeout=WAIT_MS)
    page.get_by_role("radio", name="CNN", exact=True).check()  # the CNN's features instead
    page.get_by_role("button", name="Train my classifier").click()
    expect(page.get_by_text("Trained on the CNN's features of 10 photos")).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text(re.compile("class activation map: the cells' votes"))).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#own-label .output-class")).to_have_text("blue", timeout=WAIT_MS)
    page.locator("#photo button[aria-label='Remove Image']").click()  # no map beside no picture
    expect(page.locator("#own-map img")).to_have_count(0, timeout=WAIT_MS)
    assert not errors, errors
