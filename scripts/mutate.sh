#!/usr/bin/env bash
# `make mutate`: mutation testing with mutmut over the modules and fast tests that
# [tool.mutmut] in pyproject.toml names (mutants/ is mutmut's working copy), then
# killed/survived counts per module and every mutant that was not killed, for
# docs/development.md. `.venv/bin/mutmut show NAME` prints a mutant's diff. mutmut keeps its
# results in mutants/ and tests again only what changed since; `make clean` removes them.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-.venv/bin}
# mutmut's tests run in-process (forked per mutant), as many at once as there are cores.
"$bin/mutmut" run --max-children "$(nproc)"
"$bin/mutmut" results --all true >mutants/results.txt
echo
echo "per module: mutants by status (a timeout is a mutant that stalls the tests: caught)"
# Names are <module>.x_<function>__mutmut_<n> or <module>.xǁ<class>ǁ<method>__mutmut_<n>.
awk -F': ' '{ name = $1; sub(/^ +/, "", name); sub(/\.x(_|ǁ).*/, "", name); count[name ": " $2]++ }
     END { for (k in count) printf "  %s %d\n", k, count[k] }' mutants/results.txt | sort
echo
echo "not killed (status: mutant):"
awk -F': ' '$2 != "killed" { sub(/^ +/, "", $1); print "  " $2 ": " $1 }' mutants/results.txt
