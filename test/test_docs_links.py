"""Relative links in the project's Markdown reach an existing file and, with a #fragment, an existing heading there.

Sections of docs/results.md are renamed and moved as results change; a link from the README or the model card to a
renamed heading still renders, but lands at the top of a 3000-line page. The anchors are GitHub's: the heading's
text as rendered (no markup), lower case, without punctuation and symbols, spaces as hyphens, a repeated heading
suffixed -1, -2, ...
"""
from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "mambaglue_ros").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading's text (before de-duplication)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    kept = (c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")  # letters, numbers, marks
    return "".join(kept).replace(" ", "-")


@functools.lru_cache(maxsize=None)  # results.md is the target of most links: read it once
def anchors(path: Path) -> frozenset[str]:
    """Every heading's anchor in a Markdown file (headings inside fenced code do not count)."""
    found: set[str] = set()
    times: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"#{1,6} (.+)", line)
        if heading:
            anchor = github_anchor(heading.group(1))
            n = times.get(anchor, 0)
            times[anchor] = n + 1
            found.add(anchor if n == 0 else f"{anchor}-{n}")
    return frozenset(found)


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...: not checked offline
            continue
        file, _, fragment = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no such heading")
    return broken


def test_github_anchor_examples():
    assert github_anchor("The node") == "the-node"
    assert github_anchor("Does the Mamba branch pay? The full account (the README's text until 2026-12-07)") == \
        "does-the-mamba-branch-pay-the-full-account-the-readmes-text-until-2026-12-07"
    assert github_anchor("A — B: `x_y` ≥ 1.15× in [docs](a.md)") == "a--b-x_y--115-in-docs"
    assert github_anchor("α sweep") == "α-sweep"


def test_repeated_headings_get_suffixes(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Speed\n```\n# Speed\n```\n## Speed\n[x](#speed-1) [y](#speed-2) [z](other.md)\n")
    assert anchors(page) == {"speed", "speed-1"}
    assert broken_links(page) == ["#speed-2: no such heading", "other.md: no such file"]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


RESULTS_SH = ROOT / "scripts" / "results.sh"


def results_steps() -> tuple[set[str], list[str]]:
    """The functions scripts/results.sh defines, and the steps its ``all`` runs (its steps=(...) list)."""
    text = RESULTS_SH.read_text()
    defined = set(re.findall(r"^([a-z_0-9]+)\(\) \{", text, re.M))
    listed = re.search(r"^steps=\((.*)\)$", text, re.M).group(1).split()
    return defined, listed


def test_results_sh_runs_only_defined_steps():
    defined, listed = results_steps()
    assert listed and not [s for s in listed if s not in defined]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_results_sh_steps_the_docs_name_exist(path):
    """``results.sh STEP`` in the prose names a step the script has: a renamed or removed step leaves the command
    behind the number in the docs broken."""
    defined, _ = results_steps()
    named = set(re.findall(r"results\.sh ([a-z_0-9]+)", path.read_text()))
    assert not sorted(named - defined - {"all"}), f"{path.name} names results.sh steps that do not exist"
