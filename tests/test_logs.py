"""The log: TensorFlow's C++ lines off stderr (trainer.logs.filter_native_logs), with the real
TensorFlow in a process of its own, as the entry points start it.

    .venv/bin/python -m pytest tests/test_logs.py     (two TensorFlow imports; about 8 s)
"""

from __future__ import annotations

import subprocess
import sys

SNIPPET = """
import os, sys
if sys.argv[1] == "filtered":
    from trainer.logs import filter_native_logs
    filter_native_logs()
import tensorflow as tf
tf.constant([1.0]) * 2
os.write(2, b"E1205 00:00:00.000000  1 some_op.cc:12] a C++ error stays\\n")
print("error: EPOCHS='0' is invalid: give a whole number >= 1", file=sys.stderr)
"""
CHATTER = ("absl::InitializeLog", "port.cc:", "cpu_feature_guard.cc:")


def _stderr(mode: str) -> str:
    result = subprocess.run([sys.executable, "-c", SNIPPET, mode], capture_output=True,
                            text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_tensorflows_cpp_chatter_leaves_stderr_and_everything_else_stays() -> None:
    unfiltered = _stderr("plain")
    # TensorFlow 2.21 does print it, TF_CPP_MIN_LOG_LEVEL or not: else this test proves nothing.
    assert any(text in unfiltered for text in CHATTER), unfiltered
    filtered = _stderr("filtered")
    assert not [line for line in filtered.splitlines() if any(t in line for t in CHATTER)]
    assert "a C++ error stays" in filtered
    assert filtered.rstrip().endswith("error: EPOCHS='0' is invalid: give a whole number >= 1")
