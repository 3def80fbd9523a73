"""The package's architecture as its tree shows it (trainer/__init__.py): parts in subpackages
import downwards only, and the modules that must answer in a second import no TensorFlow.

    .venv/bin/python -m pytest tests/test_layout.py     (no TensorFlow; about 3 s)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trainer"
# What every part may import from the top: the frozen settings and what they are made of.
FOUNDATION = {"errors", "logs", "redaction", "ticker", "settings", "options", "locations"}
SUBPACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
TOP_MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
RECIPE = set(TOP_MODULES) - FOUNDATION


def _trainer_imports(path: Path) -> set[str]:
    """The `trainer.X[.Y]` modules a file imports, as dotted names below `trainer`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "trainer":
                continue
            if len(parts) == 1:  # from trainer import cli
                found.update(alias.name for alias in node.names)
            else:
                found.add(".".join(parts[1:]))
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names
                         if a.name.startswith("trainer."))
    return found


def test_the_tree_has_the_concerns_and_no_prefix_names() -> None:
    assert {"data", "store", "serving", "cluster", "tracking", "reports", "models"} <= set(
        SUBPACKAGES)
    prefixed = [m for m in TOP_MODULES
                if m.startswith(("s3_", "tfrecords_", "progress_", "sweep_"))]
    assert not prefixed, f"concern prefixes acting as folders: {prefixed}"
    assert len(TOP_MODULES) <= 25, TOP_MODULES


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_parts_never_import_the_recipe_above_them(sub: str) -> None:
    upward = {}
    for path in sorted((PACKAGE / sub).rglob("*.py")):
        bad = {m for m in _trainer_imports(path) if m.split(".")[0] in RECIPE}
        if bad:
            upward[str(path.relative_to(PACKAGE.parent))] = sorted(bad)
    assert not upward, f"imports from a part up into the recipe: {upward}"


def test_the_foundation_imports_no_recipe_module() -> None:
    for name in FOUNDATION:
        bad = {m for m in _trainer_imports(PACKAGE / f"{name}.py") if m.split(".")[0] in RECIPE}
        assert not bad, f"trainer/{name}.py imports the recipe modules {sorted(bad)}"


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_each_subpackage_says_what_it_owns_and_runs_no_code(sub: str) -> None:
    tree = ast.parse((PACKAGE / sub / "__init__.py").read_text())
    docstring = ast.get_docstring(tree)
    assert docstring and "Owns:" in docstring and "May import:" in docstring
    # Docstring only: importing trainer.<sub>.x must not import its siblings (TensorFlow).
    assert len(tree.body) == 1


def test_every_module_reads_in_one_sitting() -> None:
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 300}
    assert not long, f"modules over 300 lines: {long}"


@pytest.mark.parametrize(("modules", "heavy"), [
    # The CLI starts in a second: nothing heavy until a command needs it.
    ("trainer.cli, trainer.job, trainer.settings, trainer.data.load, trainer.runs",
     ("tensorflow", "keras", "boto3", "matplotlib", "mlflow")),
    # What runs before the strategy is made (TensorFlow configures devices once, at its start).
    ("trainer.outputs, trainer.store.s3, trainer.store.uploader, trainer.serving.formats",
     ("tensorflow", "keras")),
])
def test_what_answers_in_a_second_imports_nothing_heavy(modules: str, heavy: tuple) -> None:
    code = f"import sys, {modules}\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]", f"{modules} import {loaded} at start"
