"""A sweep's grid file (JSON, or YAML): setting variables mapped to a value, or to a list of
values that is a dimension of the grid (trainer.sweep runs it), and each combination's digest.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer.errors import ConfigError, first_line
from trainer.settings import OPTIONS


@dataclass(frozen=True)
class Grid:
    """The lists to combine (in the file's order) and the settings every combination has."""

    varying: dict[str, list[str]]
    fixed: dict[str, str]

    def __len__(self) -> int:
        count = 1
        for values in self.varying.values():
            count *= len(values)
        return count

    def combination(self, index: int) -> dict[str, str]:
        """Combination `index`'s settings (fixed and varying), as variables."""
        if not 0 <= index < len(self):
            raise ConfigError(f"combination {index} does not exist: the grid has {len(self)} "
                              f"(0 to {len(self) - 1})")
        return self.combinations()[index]

    def combinations(self) -> list[dict[str, str]]:
        names = list(self.varying)
        return [{**self.fixed, **dict(zip(names, values, strict=True))}
                for values in itertools.product(*self.varying.values())]


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; ConfigError naming what is wrong."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"sweep grid {path}: {error.strerror}; give the path of a JSON or "
                          "YAML grid file") from None
    try:
        content = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except ValueError as error:  # json.JSONDecodeError and yaml.YAMLError are ValueErrors
        raise ConfigError(f"sweep grid {path} is not valid JSON/YAML: {first_line(error)}"
                          ) from None
    return parse_grid(content, str(path))


def parse_grid(content: Any, source: str = "the grid") -> Grid:
    if not isinstance(content, dict) or not content:
        raise ConfigError(f"sweep grid {source}: give a mapping of setting variables to a "
                          "value or a list of values, e.g. LEARNING_RATE: [\"1e-3\", \"1e-4\"]")
    variables = {o.variable for o in OPTIONS} - {"RUN_ID"}
    unknown = sorted(str(k) for k in content if k not in variables)
    if unknown:
        hint = " (its RUN_ID is <sweep>-<index>-<digest>)" if "RUN_ID" in unknown else ""
        raise ConfigError(f"sweep grid {source}: {', '.join(unknown)} is not a setting "
                          f"variable{hint}; use the variables of `trainer train --help`")
    varying: dict[str, list[str]] = {}
    fixed: dict[str, str] = {}
    for name, value in content.items():
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"sweep grid {source}: {name} has an empty list")
            varying[name] = [_text(source, name, v) for v in value]
        else:
            fixed[name] = _text(source, name, value)
    return Grid(varying, fixed)


def _text(source: str, name: str, value: Any) -> str:
    if isinstance(value, bool):
        raise ConfigError(f"sweep grid {source}: {name}: {value} was read as a boolean (YAML "
                          "reads on/off/yes/no so); quote it, e.g. 'on'")
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ConfigError(f"sweep grid {source}: {name}: give a value or a list of values, not "
                      f"{type(value).__name__} {value!r}")


def combination_digest(combination: Mapping[str, str]) -> str:
    """8 hex digits of sha256 over the combination's values as parsed ("1e-3" and "0.001" are
    one learning rate), in variable order."""
    options = {option.variable: option for option in OPTIONS}
    values = {name: _parsed(options[name].parse, name, text) for name, text in combination.items()}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _parsed(parse: Any, name: str, text: str) -> Any:
    try:
        return parse(name, text)
    except ConfigError:  # reported with its combination by plan_sweep
        return text
