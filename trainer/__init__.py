"""Transfer-learning training job for keras.applications image classifiers.

    python entrypoint.py        # the container: settings from the environment
    trainer --help              # the same job, and the commands around it

The TensorFlow boundary: `settings`, `job`, the dataset listing (`data` and what it uses),
`storage`, `s3`, `runs`, `outputs` and the CLI import no TensorFlow, so that a bad setting, an
unwritable store, missing data or a finished run fail (or finish) in a second. `job.run_job`
hands over to `train.train`, which imports TensorFlow at the top, as do the modules only it uses
(`model`, `loop`, `pipeline`, `control`, `evaluation`, `scalars`, `recipe`, ...); the CLI's
`predict`, `evaluate` and `export` cross the same boundary in one import each. Other imports
inside functions are optional dependencies (boto3 for S3, scikit-learn for `digits`, Keras'
dataset downloads, the export runtimes, MLflow) used on one path only.

Modules, by concern:
- settings: every setting, read once into a frozen dataclass; errors: exit codes; logs.
- job: the checks before training; train: the recipe (devices, model, steps, inputs,
  outputs, resume, epochs, finish); loop: the compiled steps; recipe: phases and schedule;
  control: SIGTERM and lost peers; distribution and peers: strategies and clusters.
- data, folders, tfrecords: datasets as arrays, image files or TFRecord streams (tfrecords
  reads and counts with TensorFlow, imported only inside its functions, after the strategy);
  images: the one decode-and-resize; pipeline: tf.data; backbones: the name table and sizes;
  model: the classifier and its weights.
- storage, s3, s3_errors, s3_mirror, keys, uploader: where runs are kept; files: atomic writes
  and digests; artifacts: a run's files; outputs, finish: what the chief writes and when;
  state: resume state; redaction: secrets out of messages; platforms: SageMaker and Vertex AI;
  cluster: TF_CONFIG and friends.
- evaluation, report, plots, scalars: what a run shows; formats, export, converters, serving:
  the serving exports; tracking, backlog, progress, progress_log: MLflow and progress;
  sweep, sweep_report: grids of runs; runs, predict, cli, options: using runs.
"""
