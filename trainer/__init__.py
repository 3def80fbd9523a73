"""Transfer-learning training job for keras.applications image classifiers.

    python entrypoint.py        # the container: settings from the environment
    trainer --help              # the same job, and the commands around it

The TensorFlow boundary: `settings`, `job`, `data`, `storage`, `s3`, `runs`, `outputs` and the
CLI import no TensorFlow, so that a bad setting, an unwritable store, missing data or a finished
run fail (or finish) in a second. `job.run_job` hands over to `train.train`, which imports
TensorFlow at the top, as do the modules only it uses (`model`, `loop`, `pipeline`, `control`,
`evaluation`, `scalars`, `recipe`). Other imports inside functions are optional dependencies
(boto3 for S3, scikit-learn for `digits`, Keras' dataset downloads) used on one path only.

Modules, by concern:
- settings: every setting, read once into a frozen dataclass; errors: exit codes; logs.
- job: the checks before training; train: the recipe (devices, model, steps, inputs,
  outputs, resume, epochs, finish); loop: the compiled steps; recipe: phases and schedule;
  control: SIGTERM and lost peers; distribution and peers: strategies and clusters.
- data, folders, tfrecords: datasets as arrays, image files or TFRecord streams (tfrecords
  reads and counts with TensorFlow, imported only inside its functions, after the strategy);
  images: the one decode-and-resize; pipeline: tf.data; backbones: the name table and sizes;
  model: the classifier and its weights.
- storage, s3, uploader: where runs are kept; files: atomic writes and digests;
  artifacts: a run's files; outputs: what the chief writes and when; state: resume state.
- evaluation, report, plots, scalars: what a run shows; runs, predict, cli: using runs.
"""
