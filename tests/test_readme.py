"""README.md, the front page, and the docs/ pages it links: every setting, command and exit code
documented, every relative link resolving, every command example runnable as written.

    .venv/bin/python -m pytest tests/test_readme.py     (no TensorFlow; about 2 s)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from trainer.cli import cli
from trainer.settings import OPTIONS, shown_default

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
ACTIVATE = "source .venv/bin/activate"


def _all_text() -> str:
    return "\n".join(page.read_text() for page in PAGES)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text())
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_readme_is_a_front_page_that_links_every_docs_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200, "README.md is a front page: move references to docs/"
    assert "make run" in text and "make test" in text
    assert ACTIVATE in text and ".venv/bin/trainer" in text
    assert "PYTHON=" in text and "make clean" in text
    # The first examples download; their offline variants stand next to them.
    assert "--weights none" in text and "WEIGHTS=/" in text
    linked = {target.split("#")[0] for target in LINK.findall(text)}
    unlinked = [p.name for p in PAGES[1:] if f"docs/{p.name}" not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_the_docs_document_every_setting_command_and_exit_code() -> None:
    text = _all_text()
    for option in OPTIONS:
        assert f"| `{option.variable}` | `{option.flag}` |" in text, option.variable
    for name in cli.commands:
        assert f"trainer {name} " in text, f"`trainer {name}` is in neither README nor docs/"
    for code in (0, 1, 2, 3, 4, 75, 143):
        assert f"| {code} |" in text, f"exit code {code} is not in the exit-code table"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path) if path else page
        unknown_anchor = bool(anchor) and resolved.suffix == ".md" and resolved.exists() \
            and anchor not in _anchors(resolved)
        if not resolved.exists() or unknown_anchor:
            broken.append(target)
    assert not broken, f"{page.name}: links that lead nowhere: {broken}"


def _bare_commands(page: Path) -> list[str]:
    """Commands of the page's sh/bash/unmarked code blocks that use `trainer`, `python` or
    `tensorboard` without the .venv/bin/ path and without the environment activated: earlier in
    the same block, or for the whole page in its opening, before the first code block."""
    text = page.read_text()
    blocks = list(FENCE.finditer(text))
    page_wide = bool(blocks) and ACTIVATE in text[:blocks[0].start()]
    bare = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(trainer|python|tensorboard)\b")
    found = []
    for block in blocks:
        if block.group(1) not in ("", "sh", "bash") or page_wide:
            continue
        activated = False
        for line in block.group(2).splitlines():
            activated = activated or line.strip().startswith(ACTIVATE)
            if bare.match(line.strip()) and not activated:
                found.append(line.strip())
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_commands_name_the_virtual_environment(page: Path) -> None:
    """`trainer` and `python` exist only in .venv: a command runs as written when it says
    .venv/bin/, or when the environment was activated before it."""
    wrong = _bare_commands(page)
    assert not wrong, f"{page.name}: commands outside the venv that say nothing of it: {wrong}"


def _variables_table() -> dict[str, tuple[str, str, str]]:
    """docs/configuration.md's table of settings: variable -> (flag, default, meaning)."""
    rows = {}
    for line in (REPO / "docs" / "configuration.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) == 4 and re.fullmatch(r"`[A-Z0-9_]+`", cells[0]):
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2].replace("`", ""),
                                         cells[3])
    return rows


def test_the_variables_table_has_the_defaults_that_help_shows() -> None:
    """The table and `trainer train --help` both say each default as shown_default does: the
    table may go on after it (", e.g. ...", " (...)"), never say another."""
    table = _variables_table()
    assert set(table) == {option.variable for option in OPTIONS}, "a row per setting, no other"
    help_text = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    for option in OPTIONS:
        flag, default, _ = table[option.variable]
        shown = shown_default(option)
        assert flag == option.flag, option.variable
        assert re.fullmatch(re.escape(shown) + r"([ ,(;].*)?", default), (
            f"{option.variable}: docs/configuration.md says the default is {default!r}, "
            f"--help says {shown!r}")
        assert f"[env var: {option.variable}; default: {shown}]" in help_text, option.variable


def test_precision_says_every_case_in_which_auto_picks_bfloat16() -> None:
    """The CPU features that PRECISION=auto reads, and the speed-up it asks of AVX512-BF16,
    as trainer/cluster/distribution.py has them (read as text: importing it imports
    TensorFlow), in both --help and the table."""
    source = (REPO / "trainer" / "cluster" / "distribution.py").read_text()
    features = re.findall(r'"(\w+)_bf16" in flags', source)
    speedup = re.search(r"^BFLOAT16_MIN_SPEEDUP = ([\d.]+)$", source, re.M)
    assert features and speedup, "distribution.py no longer reads the CPU flags this way"
    option = next(o for o in OPTIONS if o.variable == "PRECISION")
    for text in (option.help, _variables_table()["PRECISION"][2]):
        for feature in features:
            assert f"{feature.upper()}-BF16" in text, (feature, text)
        assert f"{speedup.group(1)}x" in text, text


def test_the_manifest_example_has_the_fields_the_manifest_has() -> None:
    from trainer.outputs import MANIFEST_EXPORT_FIELDS

    text = (REPO / "docs" / "serving.md").read_text()
    example = next(block.group(2) for block in FENCE.finditer(text)
                   if block.group(1) == "json" and '"exports"' in block.group(2))
    exports = json.loads("{" + example + "}")["exports"]
    for kind, fields in exports.items():
        assert set(fields) <= set(MANIFEST_EXPORT_FIELDS), (kind, sorted(fields))
        assert {"status", "max_abs_difference"} <= set(fields), kind
