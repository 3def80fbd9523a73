"""Container entrypoint: the training job, configured by environment variables.

    DATASET=digits BACKBONE=VGG16 WEIGHTS=none IMAGE_SIZE=32 python entrypoint.py

Arguments, if any, are `trainer train` flags (`python entrypoint.py --epochs 3`). The exit code
follows the contract: 0 done, 2 configuration, 3 data, 4 storage, 75 transient, 143 SIGTERM.
"""

import sys

from trainer.cli import entry

if __name__ == "__main__":
    sys.exit(entry(["train", *sys.argv[1 + (sys.argv[1:2] == ["train"]):]]))  # SageMaker: train
