"""Datasets, from a location to batches on the devices.

Owns: loading DATASET (`load`: built-in names in `builtin`, `.npz` arrays in `arrays`, image folders
in `folders`, shard datasets listed in `shards`: TFRecords in `tfrecords`, read in `reading` and
counted in `counting`; WebDataset tars in `webdataset`, Parquet in `parquet`, one shard file of any
format in `shard_files`, counted in `shard_counting` with `shard_index`, the counts shared in
`tallies`; shards streamed from S3 through the bounded cache `shard_cache` (its downloads
`shard_downloads`), read by `streaming`, which records why a stream stopped in `stream_failures`),
splits and holdouts (`splits`), the one decode-and-resize (`images`), BAD_IMAGES (`bad_images`,
`decode_failures`), and the tf.data side: what each worker reads (`sources`), the in-memory cache
(`memory`), the pipelines (`pipeline`) and the run's sizes (`inputs`).

May import: `trainer.errors`, `logs`, `settings`, and the parts `store`, `models`, `cluster`; never
the recipe modules above it. `load`, `builtin`, `arrays`, `splits`, `folders`, `images`,
`tfrecords`, `shards`, `webdataset`, `parquet`, `shard_files`, `shard_index`, `shard_cache`,
`shard_downloads`, `stream_failures` and `bad_images` import no TensorFlow (a bad dataset fails in a
second; `load` and what it uses import boto3 and pyarrow only inside the functions that use them);
the rest import it at the top and run only after the strategy is made.
"""
