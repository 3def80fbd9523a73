"""TFRecord datasets: files of tf.train.Example records, `image` (encoded bytes) and `label`
(int64), streamed by tf.data and never held in memory as a whole.

    records = find_records(Path("/data/records"), validation_split=0.1, seed=0)  # no TensorFlow
    dataset = count_records(dataset, strategy, worker, workers)   # after the strategy is made

The layout is a folder of `*.tfrecord` (`.tfrecords`, `.tfrec`) files, or `train/` with `val/`
or `test/` beside it, and an optional `classes.txt` (one class name per line, in label order).
`find_records` only lists files: reading them needs TensorFlow, and TensorFlow may only start
once the strategy is made (MultiWorkerMirroredStrategy and CPU_REPLICAS configure it at start).
`count_records` then reads every record a worker reads (labels only), and the workers share
their counts, so that every worker runs the same number of steps, the class names are known,
and a malformed record is a DataError before training, not an internal error during it.

Sharding, the same in the count and in the pipeline (trainer.pipeline): with W workers and at
least W files, worker w reads files w, w + W, w + 2W... of the sorted list (so a worker needs
only its files, see `files_to_fetch`); with fewer files, every worker reads every file and keeps
record p of file f when (p + f) % W == w.

Without val/ or test/, a record is held out for validation when the FarmHash fingerprint of
"SEED:FILE NAME:POSITION" falls in the first VALIDATION_SPLIT of its range: the same records on
every worker and in `trainer evaluate` with that seed, whatever the order or number of workers
(so the share held out is VALIDATION_SPLIT on average, not exactly).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from trainer.errors import DataError
from trainer.logs import get_logger

if TYPE_CHECKING:
    import tensorflow as tf

    from trainer.data import Dataset

TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")
CLASSES_FILE = "classes.txt"
HOLDOUT_BUCKETS = 1_000_000
SIDE_SAMPLE = 16  # records of the first file whose image headers give the dataset's side
SCAN_THREADS = 4


@dataclass(frozen=True)
class Holdout:
    """Records chosen by their fingerprint: `part` "val" keeps the held-out ones."""

    fraction: float
    seed: int
    part: Literal["train", "val"]


@dataclass(frozen=True)
class Records:
    """A split streamed from TFRecord files; its counts are known after `count_records`."""

    files: tuple[str, ...]  # every file of the split, sorted: the same list on every worker
    holdout: Holdout | None = None
    count: int | None = None  # records in the split, over every worker
    shard_counts: tuple[int, ...] = ()  # records each worker reads, by worker index
    mean_bytes: float = 0.0  # of a record's encoded image

    def __len__(self) -> int:
        if self.count is None:
            raise RuntimeError("TFRecords not counted yet: call trainer.tfrecords.count_records")
        return self.count


def is_tfrecord(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in TFRECORD_SUFFIXES and not name.startswith(".")


def tfrecord_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and is_tfrecord(p.name))


def is_tfrecord_folder(root: Path) -> bool:
    return bool(tfrecord_files(root) or tfrecord_files(root / "train"))


def find_records(root: Path, validation_split: float, seed: int
                 ) -> tuple[Records, Records, tuple[str, ...]]:
    """The train and validation splits of a TFRecord folder, and the names in classes.txt
    (none when it has no classes.txt: `count_records` numbers the classes then)."""
    train_files = tfrecord_files(root / "train") or tfrecord_files(root)
    val_files = tfrecord_files(root / "val") or tfrecord_files(root / "test")
    names_file = root / CLASSES_FILE
    names = tuple(n.strip() for n in names_file.read_text().splitlines()
                  if n.strip()) if names_file.is_file() else ()
    files = tuple(str(f) for f in train_files)
    if val_files:
        return Records(files), Records(tuple(str(f) for f in val_files)), names
    return (Records(files, Holdout(validation_split, seed, "train")),
            Records(files, Holdout(validation_split, seed, "val")), names)


def shard(files: int, worker: int, workers: int) -> tuple[list[int], bool]:
    """The indices of the files worker `worker` of `workers` reads, and whether it keeps only
    its share of their records (fewer files than workers)."""
    if workers <= 1:
        return list(range(files)), False
    if files >= workers:
        return list(range(worker, files, workers)), False
    return list(range(files)), True


# --- Fetching from S3: each worker what it reads ---------------------------------------------

def files_to_fetch(names: Sequence[str], worker: int, workers: int) -> Callable[[str], bool]:
    """For a TFRecord prefix in S3: which of its objects (`names`, relative to the prefix, e.g.
    `train/part-3.tfrecord`) worker `worker` of `workers` needs: its own share of the training
    files (see `shard`), every validation file and classes.txt. The chief (worker 0) needs every
    training file when the validation split is held out of them, as it evaluates the best
    model on all of it at the end. Anything else (an image folder, an .npz) is fetched whole.

    The hook for trainer.s3.download_uri's `select` (the prefix is listed first); NOT WIRED YET:
    download_uri on this branch fetches the whole prefix. See trainer.job.load_run_dataset.
    """
    top = [n for n in names if "/" not in n and is_tfrecord(n)]
    train = sorted(n for n in names if n.startswith("train/") and is_tfrecord(n.split("/", 1)[1]))
    train = train or sorted(top)
    has_val = any(n.split("/", 1)[0] in ("val", "test") and is_tfrecord(n.rsplit("/", 1)[-1])
                  for n in names if "/" in n)
    if not train or workers <= 1 or (worker == 0 and not has_val):
        return lambda name: True
    indices, _ = shard(len(train), worker, workers)
    mine = {train[i] for i in indices}
    return lambda name: name not in train or name in mine


# --- Reading (TensorFlow, after the strategy is made) -----------------------------------------

FEATURES: dict[str, Any] = {}


def _features() -> dict[str, Any]:
    import tensorflow as tf

    if not FEATURES:
        FEATURES.update({"image": tf.io.FixedLenFeature([], tf.string),
                         "label": tf.io.FixedLenFeature([], tf.int64)})
    return FEATURES


def _held_out(holdout: Holdout, name: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
    """Whether the record at `position` of file `name` is held out for validation."""
    import tensorflow as tf

    key = tf.strings.join([f"{holdout.seed}:", name, ":", tf.strings.as_string(position)])
    bucket = tf.strings.to_hash_bucket_fast(key, HOLDOUT_BUCKETS)
    return bucket < int(round(holdout.fraction * HOLDOUT_BUCKETS))


def _file_records(path: tf.Tensor, index: tf.Tensor, name: tf.Tensor, worker: int,
                  workers: int, by_record: bool, holdout: Holdout | None) -> tf.data.Dataset:
    """(position, serialized record) of one file: this worker's share of its records, of the
    holdout's part."""
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(path).enumerate()
    if by_record:
        ds = ds.filter(lambda position, _: (position + index) % workers == worker)
    if holdout is not None:
        keep_held = holdout.part == "val"

        def wanted(position: tf.Tensor, _: tf.Tensor) -> tf.Tensor:
            held = _held_out(holdout, name, position)
            return held if keep_held else tf.logical_not(held)

        ds = ds.filter(wanted)
    return ds


def read_records(records: Records, worker: int, workers: int, order_seed: int | None = None,
                 ) -> tf.data.Dataset:
    """(serialized record, "FILE#POSITION") of the records worker `worker` of `workers` reads:
    files in a shuffled order when `order_seed` is given (the same on every worker), read in
    parallel and interleaved in a deterministic order."""
    import tensorflow as tf

    indices, by_record = shard(len(records.files), worker, workers)
    paths = [records.files[i] for i in indices]
    names = [Path(p).name for p in paths]
    ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(indices, np.int64), names))
    if order_seed is not None and len(paths) > 1:
        ds = ds.shuffle(len(paths), seed=order_seed, reshuffle_each_iteration=False)

    def file(path: tf.Tensor, index: tf.Tensor, name: tf.Tensor) -> tf.data.Dataset:
        return _file_records(path, index, name, worker, workers, by_record,
                             records.holdout).map(lambda position, record: (
                                 record, tf.strings.join([name, "#",
                                                          tf.strings.as_string(position)])))

    return ds.interleave(file, cycle_length=max(1, min(len(paths), 16)), block_length=1,
                         num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A serialized record -> (encoded image bytes, int64 label)."""
    import tensorflow as tf

    example = tf.io.parse_single_example(record, _features())
    return example["image"], example["label"]


# --- Counting (TensorFlow, after the strategy is made) ----------------------------------------

@dataclass
class _Tally:
    count: int = 0
    image_bytes: int = 0
    low: int = 2**62
    high: int = -1

    def add(self, labels: np.ndarray, sizes: np.ndarray) -> None:
        if len(labels):
            self.count += len(labels)
            self.image_bytes += int(sizes.sum())
            self.low, self.high = min(self.low, int(labels.min())), max(self.high,
                                                                         int(labels.max()))

    def merge(self, other: _Tally) -> None:
        self.count += other.count
        self.image_bytes += other.image_bytes
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)

    def row(self) -> list[int]:
        return [self.count, self.image_bytes, self.low, self.high]


def _tally_file(path: str, index: int, worker: int, workers: int, by_record: bool,
                holdout: Holdout | None) -> tuple[_Tally, _Tally]:
    """This worker's records of one file: (kept for training or "all", held out)."""
    import tensorflow as tf

    name = tf.constant(Path(path).name)
    ds = _file_records(tf.constant(path), tf.constant(index, tf.int64), name, worker, workers,
                       by_record, None)
    features = _features()

    def summary(positions: tf.Tensor, records: tf.Tensor) -> tuple:
        example = tf.io.parse_example(records, features)
        held = (_held_out(holdout, name, positions) if holdout is not None
                else tf.zeros_like(positions, tf.bool))
        return example["label"], tf.strings.length(example["image"]), held

    kept, held = _Tally(), _Tally()
    try:
        for labels, sizes, flags in ds.batch(4096).map(summary).as_numpy_iterator():
            kept.add(labels[~flags], sizes[~flags])
            held.add(labels[flags], sizes[flags])
    except (tf.errors.OpError, ValueError) as error:
        message = " ".join(str(error).split())[:200]
        raise DataError(f"DATASET: {path} holds unreadable TFRecords ({message}); give records "
                        "with an `image` (encoded bytes) and an int64 `label`") from None
    if min(kept.low, held.low) < 0:
        raise DataError(f"DATASET: {path} holds a negative label; labels are whole numbers "
                        "from 0")
    return kept, held


def _tally(records: Records, worker: int, workers: int) -> tuple[_Tally, _Tally]:
    indices, by_record = shard(len(records.files), worker, workers)
    kept, held = _Tally(), _Tally()
    with ThreadPoolExecutor(SCAN_THREADS) as pool:
        results = pool.map(lambda i: _tally_file(records.files[i], i, worker, workers, by_record,
                                                 records.holdout), indices)
        for file_kept, file_held in results:
            kept.merge(file_kept)
            held.merge(file_held)
    return kept, held


def _first_side(path: str) -> int:
    """The median larger side of the first images of `path` (their headers only)."""
    import tensorflow as tf
    from PIL import Image, UnidentifiedImageError

    sides = []
    try:
        records = list(tf.data.TFRecordDataset(path).take(SIDE_SAMPLE).map(parse)
                       .as_numpy_iterator())
    except tf.errors.OpError:
        return 0  # the count names the file
    for encoded, _ in records:
        try:
            with Image.open(io.BytesIO(encoded)) as image:
                sides.append(max(image.size))
        except (OSError, UnidentifiedImageError, ValueError):
            continue
    return int(np.median(sides)) if sides else 0


def _gather_rows(row: list[int], strategy: Any, workers: int) -> np.ndarray:
    """Every worker's `row`, by worker index (a collective: every worker calls it)."""
    import tensorflow as tf

    if strategy is None or (workers <= 1 and strategy.num_replicas_in_sync == 1):
        return np.asarray([row], np.int64)
    local_replicas = strategy.num_replicas_in_sync // workers
    # float64: collectives on every device type carry it, and it holds these counts exactly.
    value = tf.constant([row], tf.float64)

    @tf.function
    def gather() -> Any:
        return strategy.run(
            lambda: tf.distribute.get_replica_context().all_gather(value, axis=0))

    gathered = strategy.experimental_local_results(gather())[0].numpy()
    return np.round(gathered[::local_replicas]).astype(np.int64)  # each worker's first replica


def count_records(dataset: Dataset, strategy: Any = None, worker: int = 0, workers: int = 1
                  ) -> Dataset:
    """A TFRecord dataset with its counts, class names and side filled in (other datasets as
    they are). Every worker calls it at the same point: the counts are shared by a collective.
    A worker that finds its records unusable makes every worker exit 3."""
    train, val = dataset.train, dataset.val
    if not isinstance(train, Records) or not isinstance(val, Records):
        return dataset
    error: DataError | None = None
    row = [0] * 10
    files, by_record = shard(len(train.files), worker, workers)
    get_logger().info(f"reading {len(files)} of {len(train.files)} training TFRecord file(s)"
                      + (", a share of their records" if by_record else ""),
                      extra={"worker": worker, "tfrecord_files": len(files)})
    try:
        if val.holdout is not None:
            kept, held = _tally(train, worker, workers)
        else:
            kept, _ = _tally(train, worker, workers)
            held, _ = _tally(val, worker, workers)
        side = _first_side(train.files[0]) if worker == 0 else 0
        row = [0, side, *kept.row(), *held.row()]
    except DataError as found:
        error, row[0] = found, 1
    rows = _gather_rows(row, strategy, workers)
    if error is not None:
        raise error
    if rows[:, 0].any():
        failed = ", ".join(str(i) for i in np.flatnonzero(rows[:, 0]))
        raise DataError(f"DATASET={dataset.source}: worker(s) {failed} found unreadable "
                        "TFRecords; their log names the file")
    return _counted(dataset, train, val, rows, workers)


def _counted(dataset: Dataset, train: Records, val: Records, rows: np.ndarray,
             workers: int) -> Dataset:
    source = dataset.source
    train_counts, val_counts = rows[:, 2], rows[:, 6]
    if not train_counts.sum():
        raise DataError(f"DATASET={source}: the TFRecord files hold no training records")
    if not val_counts.sum():
        raise DataError(f"DATASET={source}: no record was held out for validation; give more "
                        "records, a larger VALIDATION_SPLIT, or a val/ folder of TFRecords")
    if workers > 1 and not train_counts.all():
        idle = ", ".join(str(i) for i in np.flatnonzero(train_counts == 0))
        raise DataError(f"DATASET={source}: worker(s) {idle} of {workers} would read no "
                        "training records; give more (or more even) TFRecord files")
    train_low, train_high = rows[:, 4][train_counts > 0].min(), rows[:, 5].max()
    high = int(max(train_high, rows[:, 9].max()))
    if train_low == train_high:
        raise DataError(f"DATASET={source} has a single class; a classifier needs two or more")
    names = dataset.class_names or tuple(str(i) for i in range(high + 1))
    if high >= len(names):
        raise DataError(f"DATASET={source}: labels go up to {high} but {CLASSES_FILE} names "
                        f"{len(names)} classes")

    def filled(split: Records, counts: np.ndarray, image_bytes: int) -> Records:
        total = int(counts.sum())
        return replace(split, count=total, shard_counts=tuple(int(c) for c in counts),
                       mean_bytes=image_bytes / max(total, 1))

    return replace(dataset, train=filled(train, train_counts, int(rows[:, 3].sum())),
                   val=filled(val, val_counts, int(rows[:, 7].sum())), class_names=names,
                   native_size=int(rows[:, 1].max()))
