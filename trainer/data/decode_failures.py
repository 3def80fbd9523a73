"""Decoding in tf.data that survives broken images: an element whose conversion fails (a broken
file, a malformed record) is left out and its name recorded, never an error that ends the run.

    ds = guarded(ds, convert, image_size, finite=True)   # (*payload, name) -> (image, label)
    apply_bad_images_policy(take_decode_failures(), settings.bad_images)   # trainer.data.bad_images

TensorFlow is imported at the top: this module runs only after the strategy is made (see
trainer/__init__.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import tensorflow as tf

# A failed element is named by the next one that decodes, which carries the names of the
# FAILURE_WINDOW - 1 elements before it (longer runs of failures are counted, not named).
FAILURE_WINDOW = 16
_failures: list[str] = []
_unnamed_failures = [0]
_failures_lock = threading.Lock()


def _note_failures(window: tf.Tensor, missing: tf.Tensor) -> tf.Tensor:
    count = int(missing)
    named = min(count, FAILURE_WINDOW - 1)
    names = [n.decode("utf-8", "replace") for n in window.numpy()[-1 - named:-1]]
    with _failures_lock:
        _failures.extend(names)
        _unnamed_failures[0] += count - named
    return tf.constant(True)


def take_decode_failures() -> list[str]:
    """The files (or `FILE#POSITION` records) that failed to decode since the last call, each
    once, in order (and "N more" for failures too close together to be named)."""
    with _failures_lock:
        found = list(dict.fromkeys(_failures))
        if _unnamed_failures[0]:
            found.append(f"{_unnamed_failures[0]} more image(s) next to those")
        _failures.clear()
        _unnamed_failures[0] = 0
    return found


def guarded(ds: tf.data.Dataset, convert: Callable, image_size: int,
            finite: bool) -> tf.data.Dataset:
    """Elements (*payload, name) -> (image, label) by `convert(*payload)`, in parallel and in
    order; an element whose conversion fails (a broken file, a malformed record) is left out,
    and its name recorded (see `take_decode_failures`).

    tf.data cannot catch an error, only skip the element (`ignore_errors`). So each element
    carries its sequence number and the names of the elements up to it, and the first element
    after a gap in the numbers names the ones missing. A `finite` stream ends with a blank
    element, never converted, so that failures at its very end are found too."""
    ds = ds.map(lambda *fields: (fields, tf.constant(False)))
    if finite:
        blank = tuple(tf.zeros(spec.shape, spec.dtype) for spec in ds.element_spec[0])
        ds = ds.concatenate(tf.data.Dataset.from_tensors((blank, tf.constant(True))))

    def remember(window: tf.Tensor, element: tuple) -> tuple:
        fields, last = element
        window = tf.concat([window[1:], tf.reshape(fields[-1], [1])], 0)
        return window, (fields[:-1], last, window)

    def attempt(number: tf.Tensor, element: tuple) -> tuple:
        payload, last, window = element
        image, label = tf.cond(last, lambda: (tf.zeros((image_size, image_size, 3), tf.uint8),
                                              tf.constant(-1, tf.int64)),
                               lambda: convert(*payload))
        return number, image, label, last, window

    def gap(previous: tf.Tensor, element: tuple) -> tuple:
        number, image, label, last, window = element
        return number, (image, label, last, window, number - previous - 1)

    def report(image: tf.Tensor, label: tf.Tensor, last: tf.Tensor, window: tf.Tensor,
               missing: tf.Tensor) -> tuple:
        # Python runs only after a failure.
        noted = tf.cond(missing > 0, lambda: tf.reshape(
            tf.py_function(_note_failures, [window, missing], tf.bool), []),
            lambda: tf.constant(True))
        with tf.control_dependencies([noted]):
            return tf.identity(image), tf.identity(label), last

    ds = ds.scan(tf.fill([FAILURE_WINDOW], ""), remember).enumerate()
    ds = ds.map(attempt, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    ds = ds.scan(tf.constant(-1, tf.int64), gap).map(report)
    if finite:
        ds = ds.filter(lambda image, label, last: tf.logical_not(last))
    return ds.map(lambda image, label, last: (image, label))
