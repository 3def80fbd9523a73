"""`python -m trainer ARGS`: the `trainer` command (trainer.cli) under this very interpreter, as
`trainer sweep` starts each of its runs. Like entrypoint.py and the console script pip writes,
an entry: the one place in the package that exits, with the code trainer.cli.main returns.

    python -m trainer train --epochs 3
"""

import sys

from trainer.cli import entry

sys.exit(entry())
