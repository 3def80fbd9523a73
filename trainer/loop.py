"""The one training loop: `strategy.run` over `distribute_datasets_from_function`.

It serves the CPU, one GPU, MirroredStrategy over N GPUs and MultiWorkerMirroredStrategy over
N nodes alike (Keras' `model.fit` fails under the multi-worker strategy, see GUIDE.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import keras
import tensorflow as tf

from trainer.cluster.distribution import resolve_xla
from trainer.settings import Settings
from trainer.state import Totals

SUM = tf.distribute.ReduceOp.SUM
NO_STEPS = Totals()
DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]


@dataclass(frozen=True)
class EpochMetrics:
    totals: Totals
    steps_done: int
    completed: bool  # False when a stop was requested before the last step, or diverged
    diverged: bool = False  # the loss became NaN or infinite: the epoch stopped there


class Loop:
    """Compiled train and evaluation steps for one model, optimizer and strategy."""

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer, global_batch: int,
                 steps_per_call: int = 10, label_smoothing: float = 0.0,
                 xla: bool = False) -> None:
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.global_batch = global_batch
        self.steps_per_call = max(1, steps_per_call)
        self.label_smoothing = label_smoothing
        self.xla = xla
        self._sum_flags = tf.function(self._flags_sum)
        # Moving statistics that each replica keeps for itself (BatchNormalization layers not
        # synchronized): averaged across replicas before each evaluation and save.
        self._own_statistics = [
            variable for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized
            for variable in (layer.moving_mean, layer.moving_variance)
        ] if strategy.num_replicas_in_sync > 1 else []
        self._average = tf.function(self._average_statistics)
        self.retrace()

    @classmethod
    def for_settings(cls, settings: Settings, strategy: tf.distribute.Strategy,
                     model: keras.Model, optimizer: keras.optimizers.Optimizer,
                     global_batch: int) -> Loop:
        """The loop a run's settings make: STEPS_PER_CALL, LABEL_SMOOTHING and XLA."""
        return cls(strategy, model, optimizer, global_batch, settings.steps_per_call,
                   settings.label_smoothing, resolve_xla(settings.xla, strategy))

    def retrace(self) -> None:
        """Fresh compiled functions: call it after changing which layers train, or the
        functions traced before would go on training the old set."""
        # Only each replica's forward and backward pass is XLA-compiled: applying gradients
        # all-reduces them across replicas, which an XLA cluster cannot contain.
        self._compute = (tf.function(self._gradients, jit_compile=True) if self.xla
                         else self._gradients)
        self._train = tf.function(self._train_steps)
        self._evaluate = tf.function(self._evaluate_steps)

    def _gradients(self, images: tf.Tensor, labels: tf.Tensor) -> tuple:
        with tf.GradientTape() as tape:
            probabilities = self.model(images, training=True)
            if self.label_smoothing:
                targets = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(probabilities)[-1])
                per_example = keras.losses.categorical_crossentropy(
                    targets, probabilities, label_smoothing=self.label_smoothing)
            else:
                per_example = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
            loss = tf.reduce_sum(per_example) / self.global_batch
            if self.model.losses:
                loss += tf.add_n(self.model.losses) / self.strategy.num_replicas_in_sync
            # A no-op but under float16, where the loss is scaled against underflow.
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, self.model.trainable_variables)
        return gradients, tf.reduce_sum(per_example), _correct(labels, probabilities)

    def _train_step(self, batch: tuple) -> tuple:
        images, labels = batch
        gradients, loss_sum, correct = self._compute(images, labels)
        self.optimizer.apply_gradients(
            zip(gradients, self.model.trainable_variables, strict=True))
        return loss_sum, correct, tf.size(labels)

    def _train_steps(self, iterator: Iterator, steps: tf.Tensor) -> tuple:
        totals = (tf.constant(0.0), tf.constant(0.0), tf.constant(0.0))
        for _ in tf.range(steps):
            results = self.strategy.run(self._train_step, args=(next(iterator),))
            totals = tuple(
                total + tf.cast(self.strategy.reduce(SUM, value, axis=None), tf.float32)
                for total, value in zip(totals, results, strict=True)
            )
        return totals

    def _evaluate_step(self, batch: tuple) -> tuple:
        images, labels, weights = batch
        probabilities = self.model(images, training=False)
        per_example = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
        return (tf.reduce_sum(tf.cast(per_example, tf.float32) * weights),
                tf.reduce_sum(_matches(labels, probabilities) * weights), tf.reduce_sum(weights))

    def _evaluate_steps(self, iterator: Iterator, steps: tf.Tensor) -> tuple:
        totals = (tf.constant(0.0), tf.constant(0.0), tf.constant(0.0))
        for _ in tf.range(steps):
            results = self.strategy.run(self._evaluate_step, args=(next(iterator),))
            totals = tuple(total + self.strategy.reduce(SUM, value, axis=None)
                           for total, value in zip(totals, results, strict=True))
        return totals

    def train_epoch(
        self,
        dataset_fn: DatasetFn,
        steps: int,
        on_progress: Callable[[int, int], None] = lambda done, steps: None,
        stop_requested: Callable[[], bool] = lambda: False,
        start_step: int = 0,
        partial: Totals = NO_STEPS,
    ) -> EpochMetrics:
        """Steps `start_step`..`steps` of an epoch, `partial` holding the earlier steps' sums.
        Stops early, after a whole call of steps, when `stop_requested()`."""
        started = time.perf_counter()
        iterator = iter(self.strategy.distribute_datasets_from_function(dataset_fn))
        sums = list(partial[:3])
        done = start_step
        diverged = False
        while done < steps and not stop_requested():
            chunk = min(self.steps_per_call, steps - done)
            results = self._train(iterator, tf.constant(chunk))
            sums = [total + float(value) for total, value in zip(sums, results, strict=True)]
            done += chunk
            if not math.isfinite(sums[0]):
                diverged = True
                break
            on_progress(done, steps)
        totals = Totals(sums[0], sums[1], sums[2], partial.seconds + time.perf_counter() - started)
        return EpochMetrics(totals=totals, steps_done=done, completed=done == steps and
                            not diverged, diverged=diverged)

    def evaluate(self, dataset_fn: DatasetFn, steps: int) -> tuple[float, float]:
        """Loss and accuracy over every example exactly once."""
        iterator = iter(self.strategy.distribute_datasets_from_function(dataset_fn))
        loss_sum, correct, count = (float(v) for v in self._evaluate(iterator, tf.constant(steps)))
        return loss_sum / max(count, 1.0), correct / max(count, 1.0)

    def average_batch_norm(self) -> None:
        """Every replica's moving mean and variance set to their mean over the replicas (a
        collective: every worker calls it at the same point), so that the model evaluated and
        saved is the same whichever replica it is read from."""
        if self._own_statistics:
            self._average()

    def _average_statistics(self) -> None:
        def average() -> None:
            context = tf.distribute.get_replica_context()
            for variable in self._own_statistics:
                # A tensor, not the variable: MultiWorkerMirroredStrategy's all_reduce takes a
                # variable for a cross-device reduction with no destinations and fails.
                variable.assign(context.all_reduce(tf.distribute.ReduceOp.MEAN,
                                                   tf.identity(variable)))

        self.strategy.run(average)

    def any_worker(self, flag: bool) -> bool:
        """Whether `flag` is set on any worker. Every worker calls this at the same point, so
        all of them decide alike, e.g. to stop after the same step when one is told to."""
        return float(self._sum_flags(tf.constant(float(flag)))) > 0

    def _flags_sum(self, flag: tf.Tensor) -> tf.Tensor:
        per_replica = self.strategy.run(tf.identity, args=(flag,))
        return self.strategy.reduce(SUM, per_replica, axis=None)

    @property
    def learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))


def _matches(labels: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
    return tf.cast(tf.equal(predicted, tf.cast(labels, tf.int64)), tf.float32)


def _correct(labels: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(_matches(labels, probabilities))
