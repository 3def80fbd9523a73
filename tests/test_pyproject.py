"""pyproject.toml: a distribution name of its own, so that no instruction installs another
project's package from an index.

    .venv/bin/python -m pytest tests/test_pyproject.py     (no TensorFlow; about 1 s)
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# Names that package indexes already give to other projects.
TAKEN = {"trainer"}


def test_the_distribution_has_a_name_of_its_own_and_keeps_the_trainer_command() -> None:
    name = PROJECT["name"]
    assert name not in TAKEN
    assert PROJECT["scripts"] == {"trainer": "trainer.cli:entry"}
    assert any(extra.startswith(f"{name}[") for extra in PROJECT["optional-dependencies"]["dev"])


def test_the_environment_has_the_trainer_package_from_this_distribution() -> None:
    """What `make venv` installed: the import package `trainer` is this project's."""
    owners = importlib.metadata.packages_distributions().get("trainer", [])
    assert PROJECT["name"] in owners, owners
    # The checkout's own build leftovers (*.egg-info) are not the environment's.
    stale = [str(d.locate_file("")) for d in importlib.metadata.distributions()
             if d.metadata["Name"] in TAKEN and Path(d.locate_file("")).resolve() != REPO]
    assert not stale, f"a distribution by a taken name is installed too: {stale}"


def test_no_instruction_installs_a_package_by_a_taken_name() -> None:
    """`pip install 'trainer[export]'` outside the checkout installs an unrelated package."""
    files = [REPO / name for name in ("README.md", "Makefile", "Dockerfile", "pyproject.toml")]
    files += [*(REPO / "docs").glob("*.md"), *(REPO / "trainer").rglob("*.py"),
              *(REPO / "mk").glob("*"), *(REPO / "scripts").glob("*"), REPO / ".ci" / "run"]
    taken = "|".join(TAKEN)
    pattern = re.compile(rf"""pip install[^\n]*?(?<![\w./-])['"]?(?:{taken})(\[|\s|['"]|$)""",
                         re.M)
    found = [f"{path.relative_to(REPO)}: {match.group(0)}" for path in files if path.is_file()
             for match in pattern.finditer(path.read_text())]
    found += [f"pyproject.toml: {extra}" for extras in PROJECT["optional-dependencies"].values()
              for extra in extras if re.match(rf"(?:{taken})\[", extra)]
    assert not found, found
