"""Transfer-learning training job for keras.applications image classifiers.

    python entrypoint.py        # the container: settings from the environment
    trainer --help              # the same job, and the commands around it

The recipe is on top, the parts it is made of are below it, one subpackage per concern:

    trainer/                the recipe and what every part shares
      cli, options          the `trainer` command and its options (one per setting)
      job, train            the checks before training; the recipe (devices, model, steps,
                            inputs, outputs, resume, epochs, finish)
      loop, recipe          the compiled steps; phases and the learning-rate schedule
      control, state        SIGTERM and lost peers; the resume state
      outputs, finish       what the chief writes, and when; the end of a run
      runs, sweep, grid     using runs: listing, fetching; grids of runs and their files
      settings, errors,     the foundation every part may import: the frozen settings, the
      logs, ticker,         exceptions with their exit codes, JSON logs, progress lines and
      redaction             bars of long steps, secrets kept out
      data/                 datasets, from a location to batches on the devices
      store/                where runs are kept: local folders and S3
      models/               the backbone table and the classifier
      cluster/              platforms (SageMaker, Vertex AI), cluster specs, peers, strategies
      tracking/             MLflow, progress, TensorBoard scalars
      reports/              evaluation, pictures, report.html, the sweep page
      serving/              exports, their runtimes, predict

Imports run downwards only: a part (a subpackage) imports other parts and the foundation
(`errors`, `logs`, `ticker`, `redaction`, `settings`, `options`), never the recipe modules
above it (tests/test_layout.py checks it). Each subpackage's `__init__.py` says what it owns.

The TensorFlow boundary: `settings`, `job`, the dataset listing (`data.load` and what it uses),
`store`, `runs`, `outputs` and the CLI import no TensorFlow, so that a bad setting, an
unwritable store, missing data or a finished run fail (or finish) in a second. `job.run_job`
hands over to `train.train`, which imports TensorFlow at the top, as do the modules only it uses
(`models.classifier`, `loop`, `data.pipeline`, `control`, `reports.evaluation`, `recipe`, ...);
the CLI's `predict`, `evaluate` and `export` cross the same boundary in one import each. Other
imports inside functions are optional dependencies (boto3 for S3, scikit-learn for `digits`,
Keras' dataset downloads, the export runtimes, MLflow) used on one path only.
"""
