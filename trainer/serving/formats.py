"""The serving formats a run exports (setting EXPORT), and whether their packages are installed:
read before TensorFlow starts, so that a missing runtime fails a run at its start, not at its
end (trainer.serving.export writes and checks the exports)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from trainer.errors import ConfigError, ExportFailed

FORMATS = ("savedmodel", "onnx", "litert")
# What each format needs beyond TensorFlow: (module, PyPI package). onnx and tf2onnx write the
# ONNX model; onnxruntime and ai-edge-litert are the runtimes the exports are checked with.
RUNTIMES = {"savedmodel": (), "onnx": (("onnx", "onnx"), ("tf2onnx", "tf2onnx"),
                                       ("onnxruntime", "onnxruntime")),
            "litert": (("ai_edge_litert", "ai-edge-litert"),)}


def parse_formats(text: str, variable: str = "EXPORT") -> tuple[str, ...]:
    """`none`, or a comma list of savedmodel, onnx, litert -> the formats, in FORMATS order."""
    chosen = {part.strip().lower() for part in text.split(",") if part.strip()}
    if chosen in (set(), {"none"}):
        return ()
    unknown = sorted(chosen - set(FORMATS))
    if unknown:
        raise ConfigError(f"{variable}={text}: unknown format {', '.join(unknown)}; give none "
                          f"or a comma list of {', '.join(FORMATS)}")
    return tuple(name for name in FORMATS if name in chosen)


def export_failure(failed: dict[str, dict], run_id: str, where: str) -> ExportFailed:
    """The failure line of a run whose requested exports `failed` (per format, its result with
    an `error`), once everything else of it is stored at `where`."""
    causes = "; ".join(f"{kind}: {result.get('error')}" for kind, result in failed.items())
    return ExportFailed(
        f"EXPORT: the {', '.join(failed)} export failed ({causes}); nothing of it was "
        f"published, best.h5 and the rest of the run are stored in {where} (manifest.json "
        f"status failed); run again with the same RUN_ID to retry the export, or `trainer export "
        f"{run_id} --format ...` for other formats")


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_export_runtimes(formats: Sequence[str]) -> None:
    """ConfigError naming what is missing for `formats`, before a run spends hours training."""
    for name in formats:
        missing = [package for module, package in RUNTIMES[name] if not _installed(module)]
        if missing:
            raise ConfigError(
                f"EXPORT={name} needs the package(s) {', '.join(missing)}, which are not "
                "installed; install the export extra (pip install -e '.[export]' in the "
                "repository; make run's .venv has it), or leave "
                f"{name} out of EXPORT")
