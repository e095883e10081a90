"""README.md as a Hugging Face Space: its YAML front matter has what a Gradio Space needs,
and every relative link and image in README.md and docs/*.md points to a file that exists."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_SHORT_DESCRIPTION = 60  # the Hub refuses a longer short_description

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
MARKDOWN_TARGET = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG_SRC = re.compile(r"<img\b[^>]*?\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.I)


def front_matter(text: str) -> dict:
    """The YAML between the first two `---` lines; the file must start with it."""
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with YAML front matter between two --- lines"
    return yaml.safe_load(match.group(1))


def pinned_gradio(requirements: str) -> str:
    match = re.search(r"^gradio==([^\s;#]+)", requirements, re.M)
    assert match, "requirements.txt must pin gradio==X"
    return match.group(1)


def front_matter_problems(meta: dict, gradio_version: str, root: Path) -> list[str]:
    problems = []
    if meta.get("sdk") != "gradio":
        problems.append(f"sdk is {meta.get('sdk')!r}, not 'gradio'")
    if str(meta.get("sdk_version")) != gradio_version:
        problems.append(f"sdk_version {meta.get('sdk_version')!r} is not requirements.txt's gradio=={gradio_version}")
    if meta.get("app_file") != "app.py":
        problems.append(f"app_file is {meta.get('app_file')!r}, not 'app.py'")
    elif not (root / meta["app_file"]).is_file():
        problems.append(f"app_file {meta['app_file']} does not exist")
    for key in ("python_version", "license", "title", "short_description"):
        if not meta.get(key):
            problems.append(f"{key} is missing")
    description = str(meta.get("short_description") or "")
    if len(description) > MAX_SHORT_DESCRIPTION:
        problems.append(
            f"short_description has {len(description)} characters, "
            f"more than the Hub's {MAX_SHORT_DESCRIPTION}: {description!r}"
        )
    return problems


def link_targets(text: str) -> list[str]:
    """Every markdown link or image target and <img src> outside code, minus web addresses,
    mail links and same-page anchors; a target's own #anchor or ?query is cut off."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    targets = MARKDOWN_TARGET.findall(prose) + IMG_SRC.findall(prose)
    kept = []
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "//")):
            continue  # http(s)://, mailto:, data: ... and anchors on the same page
        kept.append(re.split(r"[#?]", target, maxsplit=1)[0])
    return kept


def broken_links(page: Path) -> list[str]:
    return [t for t in link_targets(page.read_text(encoding="utf-8")) if not (page.parent / t).exists()]


def test_front_matter_is_a_valid_gradio_space():
    meta = front_matter(README.read_text(encoding="utf-8"))
    gradio_version = pinned_gradio((ROOT / "requirements.txt").read_text())
    assert front_matter_problems(meta, gradio_version, ROOT) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file(page):
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} links to files that do not exist"


def test_the_readme_links_to_its_pages_and_pictures():
    targets = set(link_targets(README.read_text(encoding="utf-8")))
    assert {"docs/RESULTS.md", "docs/TRAINING.md", "docs/APP.md", "weights/time_to_accuracy.png"} <= targets


def test_the_checks_catch_what_they_are_for(tmp_path):
    meta = {
        "sdk": "gradio",
        "sdk_version": "6.31.0",
        "app_file": "app.py",
        "python_version": "3.11",
        "license": "mit",
        "title": "t",
        "short_description": "x" * 61,
    }
    (tmp_path / "app.py").write_text("")
    assert any("61 characters" in p for p in front_matter_problems(meta, "6.31.0", tmp_path))
    assert front_matter_problems({**meta, "short_description": "x" * 60}, "6.31.0", tmp_path) == []
    assert any("sdk_version" in p for p in front_matter_problems(meta, "6.32.0", tmp_path))
    assert any("app_file" in p for p in front_matter_problems({**meta, "app_file": "main.py"}, "6.31.0", tmp_path))

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.png").write_bytes(b"")
    page = tmp_path / "docs" / "PAGE.md"
    page.write_text(
        "![ok](here.png) [ok](here.png#part) [web](https://example.com/x.png) [anchor](#top)\n"
        '![gone](missing.png) <img src="../nowhere.png" alt="x" height="60"> [gone](../README.md)\n'
        "`[not a link](in-code.md)`\n```\n[nor this](in-fence.md)\n```\n"
    )
    assert broken_links(page) == ["missing.png", "../README.md", "../nowhere.png"]
