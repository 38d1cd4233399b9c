"""The documentation stays navigable and true to the code, checked without torch in well under
a second: every relative link in README.md and docs/ reaches a file (and, with `#anchor`, a
heading of it), every `docs/<page>.md` that code or docs cite exists, and every recipe shown in
the docs is one the recipe schema accepts, so a renamed field cannot linger in an example.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
CITATION = re.compile(r"\bdocs/[\w.-]+\.md\b")
REPO_PATH = re.compile(r"`((?:compressors|jobs|service|worker|bench|docker|scripts|tests|docs)/"
                       r"[\w./-]*)`")
MADE_BY_THE_USER = {"docker/.env"}  # git-ignored: the deployment guide has you create it
CITING_SUFFIXES = {".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".html", ".js", ".example"}


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats -1, -2."""
    seen: dict[str, int] = {}
    found = set()
    for _level, title in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_the_docs_pages_exist():
    names = {p.name for p in PAGES}
    assert {"user-guide.md", "evaluation.md", "methods.md", "service.md", "dashboard.md",
            "deployment.md", "benchmarks.md", "architecture.md", "scale.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_source_path_the_docs_name_exists(page):
    """A path in backticks outside code blocks (`compressors/memory.py`) names a file or folder
    of this tree, so a moved module cannot leave the docs pointing at nothing."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    missing = sorted({p for p in REPO_PATH.findall(text)
                      if not (ROOT / p).exists() and p not in MADE_BY_THE_USER})
    assert not missing, missing


def test_every_cited_docs_page_exists():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=False).stdout.split()
    files = [ROOT / f for f in tracked] or [p for p in ROOT.rglob("*") if ".venv" not in p.parts]
    missing = []
    for file in files:
        if file.suffix not in CITING_SUFFIXES or not file.is_file():
            continue
        for cited in CITATION.findall(file.read_text(encoding="utf-8", errors="replace")):
            if not (ROOT / cited).is_file():
                missing.append(f"{file.relative_to(ROOT)} cites {cited}")
    assert not missing, missing


def recipe_examples() -> list[tuple[str, dict]]:
    """Every ```json or ```yaml block of the docs that is a whole recipe (has `steps`)."""
    examples = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for number, (kind, body) in enumerate(
                re.findall(r"^```(json|yaml)\n(.*?)^```", text, re.DOTALL | re.MULTILINE)):
            data = json.loads(body) if kind == "json" else yaml.safe_load(body)
            if isinstance(data, dict) and "steps" in data:
                examples.append((f"{page.relative_to(ROOT)}[{number}]", data))
    return examples


def test_the_docs_show_recipes():
    assert len(recipe_examples()) >= 5


def test_every_recipe_in_the_docs_is_valid():
    """Parsed in a fresh interpreter that must not import torch: the docs' recipes are checked
    the way the API checks a submission; a deprecated field name counts as an error."""
    examples = json.dumps(recipe_examples())
    check = ("import json, sys, warnings; warnings.simplefilter('error')\n"
             "from compressors.recipe import parse_recipe\n"
             "bad = []\n"
             "for name, data in json.loads(sys.stdin.read()):\n"
             "    try: parse_recipe(data)\n"
             "    except Exception as error: bad.append(f'{name}: {error}')\n"
             "assert not bad, bad\n"
             "assert 'torch' not in sys.modules, 'validating recipes imported torch'\n")
    done = subprocess.run([sys.executable, "-c", check], input=examples, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
