#!/usr/bin/env bash
# The virtual environment's interpreter, before `make venv` installs into it: keeps a working
# VENV made by a supported Python; otherwise (none yet, broken, made by an unsupported Python, or
# by another interpreter than a PYTHON given explicitly) makes it anew with PYTHON, after
# checking that PYTHON is a supported version. Installs nothing.
#   scripts/venv.sh PYTHON VENV EXPLICIT     EXPLICIT: 1 when PYTHON was given by the user
set -euo pipefail

# The Python versions pyproject.toml's requires-python allows (tests/test_makefile.py checks
# that they agree); TensorFlow 2.21 has wheels for them.
SUPPORTED="3.11 3.12"
python=$1 venv=$2 explicit=${3:-0}

# "3.11 /real/path/of/the/base/interpreter", or nothing when it does not run.
describe() {
    "$1" -c 'import os, sys
print("%d.%d" % sys.version_info[:2],
      os.path.realpath(getattr(sys, "_base_executable", sys.executable)))' 2>/dev/null || true
}
supported() { [[ " $SUPPORTED " == *" $1 "* ]]; }
versions="${SUPPORTED// / or }"

if [[ -e $venv ]]; then
    read -r have have_base <<<"$(describe "$venv/bin/python")" || true
    if [[ -z ${have:-} ]]; then
        reason="its python does not run (was the interpreter it was made with removed?)"
    elif ! supported "$have"; then
        reason="it was made by Python $have, which is not supported (Python $versions)"
    elif [[ $explicit == 1 ]]; then
        read -r _ want_base <<<"$(describe "$python")" || true
        if [[ -z ${want_base:-} ]]; then
            reason="PYTHON=$python was given"  # and does not run: said below
        elif [[ $want_base != "$have_base" ]]; then
            reason="it was made by $have_base, not by PYTHON=$python ($want_base)"
        fi
    fi
    if [[ -z ${reason:-} ]]; then
        exit 0
    fi
fi

read -r want _ <<<"$(describe "$python")" || true
if [[ -z ${want:-} ]]; then
    echo "PYTHON=$python does not run: install Python $versions and give it, e.g." \
         "make run PYTHON=python3.11 (or a path: PYTHON=/usr/bin/python3.11)" >&2
    exit 2
fi
if ! supported "$want"; then
    echo "PYTHON=$python is Python $want; this project supports Python $versions" \
         "(TensorFlow's wheels): install one and give it, e.g. make run PYTHON=python3.11" >&2
    exit 2
fi
if [[ -n ${reason:-} ]]; then
    echo "$venv: $reason; making it anew"
fi
rm -rf "$venv"
echo "making $venv with $python (Python $want)"
"$python" -m venv "$venv"
