"""Datasets, from a location to batches on the devices.

Owns: loading DATASET (`load`: built-in names in `builtin`, `.npz` arrays in `arrays`, image
folders in `folders`, TFRecords listed in `tfrecords`, read in `reading` and counted in
`counting`), splits and holdouts (`splits`), the one decode-and-resize (`images`), BAD_IMAGES
(`bad_images`, `decode_failures`), and the tf.data side: what each worker reads (`sources`), the
in-memory cache (`memory`), the pipelines (`pipeline`) and the run's sizes (`inputs`).

May import: `trainer.errors`, `logs`, `settings`, and the parts `store`, `models`, `cluster`;
never the recipe modules above it. `load`, `builtin`, `arrays`, `splits`, `folders`, `images`,
`tfrecords` and `bad_images` import no TensorFlow (a bad dataset fails in a second); the rest
import it at the top and run only after the strategy is made.
"""
