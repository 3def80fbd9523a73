"""The Makefile's environment: `make venv` (under make run and make test) checks the interpreter
first and makes .venv anew when it is broken or was made by another interpreter
(scripts/venv.sh), with real interpreters of other versions where the machine has them.

    .venv/bin/python -m pytest tests/test_makefile.py     (no TensorFlow; about 7 s)
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "venv.sh"
SUPPORTED = re.search(r'^SUPPORTED="([\d. ]+)"$', SCRIPT.read_text(), re.M).group(1).split()
THIS = str(Path(sys._base_executable).resolve())  # made the test's own venv: supported


def _version(python: str) -> str | None:
    try:
        result = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _interpreters() -> dict[str, str]:
    """Runnable interpreters on this machine by version (pyenv's and the system's)."""
    found: dict[str, str] = {}
    for path in sorted(glob.glob("/root/.pyenv/versions/*/bin/python3.*")
                       + glob.glob("/usr/bin/python3.*") + glob.glob("/usr/local/bin/python3.*")):
        if re.fullmatch(r"python3\.\d+", Path(path).name) and (version := _version(path)):
            found.setdefault(version, path)
    return found


INTERPRETERS = _interpreters()
# The newest unsupported one (a Python too new for TensorFlow is the usual case).
UNSUPPORTED = next((path for version, path in sorted(
    INTERPRETERS.items(), key=lambda item: tuple(map(int, item[0].split("."))), reverse=True)
    if version not in SUPPORTED), None)
needs_unsupported = pytest.mark.skipif(UNSUPPORTED is None,
                                       reason="no unsupported Python on this machine")


def test_the_supported_versions_are_those_pyproject_allows() -> None:
    allowed = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
                           ["requires-python"])
    assert [f"3.{minor}" for minor in range(30) if f"3.{minor}.0" in allowed] == SUPPORTED
    assert _version(THIS) in SUPPORTED


def _venv_sh(python: str, venv: Path, explicit: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), python, str(venv), "1" if explicit else "0"],
                          capture_output=True, text=True, timeout=120)


@needs_unsupported
def test_make_stops_at_an_unsupported_python_before_it_makes_anything(tmp_path: Path) -> None:
    for name in ("Makefile", "pyproject.toml", "mk", "scripts"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, tmp_path / name)
    for python, says in ((UNSUPPORTED, f"is Python {_version(UNSUPPORTED)}"),
                         ("python2.5", "does not run")):
        result = subprocess.run(["make", "run", f"PYTHON={python}"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert f"PYTHON={python} {says}" in result.stderr
        assert "supports Python 3.11 or 3.12" in result.stderr or "install Python 3.11 or 3.12" \
            in result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / ".venv").exists()


@needs_unsupported
def test_a_venv_of_an_unsupported_python_is_made_anew_and_a_good_one_kept(
        tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    # What a `make run` with an unsupported Python used to leave, and reuse ever after.
    subprocess.run([UNSUPPORTED, "-m", "venv", "--without-pip", str(venv)], check=True)
    result = _venv_sh(THIS, venv)
    assert result.returncode == 0, result.stderr
    assert f"made by Python {_version(UNSUPPORTED)}, which is not supported" in result.stdout
    assert _version(str(venv / "bin" / "python")) == _version(THIS)
    assert (venv / "bin" / "pip").exists()

    (venv / "kept").touch()
    assert _venv_sh(THIS, venv).returncode == 0 and (venv / "kept").exists()
    assert _venv_sh(UNSUPPORTED, venv).returncode == 0, "a good venv is kept whatever PYTHON"
    result = _venv_sh(UNSUPPORTED, venv, explicit=True)  # given: checked, and refused
    assert result.returncode == 2 and (venv / "kept").exists()

    (venv / "bin" / "python").unlink()
    (venv / "bin" / "python").symlink_to(tmp_path / "gone" / "python3")  # a removed interpreter
    result = _venv_sh(UNSUPPORTED, venv)
    assert result.returncode == 2 and "not supported" not in result.stdout
    assert f"PYTHON={UNSUPPORTED} is Python" in result.stderr


def test_a_venv_of_another_given_interpreter_is_made_anew(tmp_path: Path) -> None:
    others = [path for version, path in INTERPRETERS.items()
              if version in SUPPORTED and Path(path).resolve() != Path(THIS)]
    if not others:
        pytest.skip("no second supported Python on this machine")
    venv = tmp_path / ".venv"
    subprocess.run([others[0], "-m", "venv", "--without-pip", str(venv)], check=True)
    assert _venv_sh(THIS, venv).returncode == 0 and not (venv / "bin" / "pip").exists()
    result = _venv_sh(THIS, venv, explicit=True)
    assert result.returncode == 0, result.stderr
    assert f"not by PYTHON={THIS}" in result.stdout
    assert _version(str(venv / "bin" / "python")) == _version(THIS)
