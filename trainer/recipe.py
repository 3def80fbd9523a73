"""The transfer-learning recipe: which layers train in which epoch, and at what learning rate.

With FINE_TUNE_EPOCHS=M > 0 a run has two phases: epochs 1..EPOCHS train the head alone (the
backbone frozen, so its BatchNormalization runs in inference mode), then M epochs train the top
FINE_TUNE_LAYERS layers with weights of the backbone too (BatchNormalization
not counted: it stays frozen), at FINE_TUNE_LEARNING_RATE. With M = 0 the whole
model trains for EPOCHS epochs, as the tutorial does. Everything here follows from the settings
and the epoch, so a resumed run takes up the same phase and learning rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras

from trainer.settings import Settings


@dataclass(frozen=True)
class Phase:
    name: str  # "train" (whole model), "head" (backbone frozen) or "fine-tune"
    first_epoch: int
    last_epoch: int
    learning_rate: float
    warmup_epochs: int


def phases(settings: Settings) -> tuple[Phase, ...]:
    if not settings.fine_tune_epochs:
        return (Phase("train", 1, settings.epochs, settings.learning_rate,
                      settings.warmup_epochs),)
    return (Phase("head", 1, settings.epochs, settings.learning_rate, settings.warmup_epochs),
            Phase("fine-tune", settings.epochs + 1, settings.total_epochs,
                  settings.fine_tune_rate, 0))


def phase_of(settings: Settings, epoch: int) -> Phase:
    return next(p for p in phases(settings) if p.first_epoch <= epoch <= p.last_epoch)


def backbone_layers(model: Any) -> list[Any]:
    """The backbone's layers in order: every layer but the input and the head."""
    return [layer for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer) and layer.name != "predictions"]


def set_trainable(model: Any, phase: Phase, fine_tune_layers: int | None) -> list[str]:
    """Freeze and unfreeze the backbone for `phase`; returns the backbone layers that train."""
    layers = backbone_layers(model)
    if phase.name == "train":
        chosen = layers
    elif phase.name == "head":
        chosen = []
    else:
        # BatchNormalization stays frozen, in inference mode: its statistics came from the
        # pre-training data, and small fine-tuning batches would spoil them.
        candidates = [layer for layer in layers if layer.weights
                      and not isinstance(layer, keras.layers.BatchNormalization)]
        chosen = candidates if fine_tune_layers is None else candidates[-fine_tune_layers:]
    chosen_ids = {id(layer) for layer in chosen}
    for layer in layers:
        layer.trainable = id(layer) in chosen_ids
    return [layer.name for layer in chosen]


class PhasedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate per optimizer step: each phase's own rate, with a linear warm-up at
    its start and, for `cosine`, a decay to 0 by its end."""

    def __init__(self, settings: Settings, steps_per_epoch: int) -> None:
        super().__init__()
        self.kind = settings.lr_schedule
        self.spans = [((p.first_epoch - 1) * steps_per_epoch, p.last_epoch * steps_per_epoch,
                       p.learning_rate, p.warmup_epochs * steps_per_epoch)
                      for p in phases(settings)]

    def __call__(self, step: Any) -> Any:
        ops = keras.ops
        step = ops.cast(step, "float32")
        rate = ops.convert_to_tensor(0.0, "float32")
        for start, end, base, warmup in self.spans:
            position = step - start
            factor = ops.convert_to_tensor(1.0, "float32")
            if warmup:
                factor = ops.minimum(factor, (position + 1.0) / warmup)
            if self.kind == "cosine":
                progress = ops.clip(position / max(end - start, 1), 0.0, 1.0)
                factor = factor * 0.5 * (1.0 + ops.cos(math.pi * progress))
            inside = ops.logical_and(step >= start, step < end)
            rate = ops.where(inside, base * factor, rate)
        _, last_end, last_base, _ = self.spans[-1]
        # Past the planned steps (never in a run, but in a report): the last phase's end value.
        final = 0.0 if self.kind == "cosine" else last_base
        return ops.where(step >= last_end, final, rate)

    def get_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "spans": self.spans}


def make_optimizer(settings: Settings, steps_per_epoch: int, policy: str) -> Any:
    """Adam on the phased schedule. Under mixed_float16 it scales the loss: the loop multiplies
    the loss by the scale before the backward pass and this optimizer divides the gradients by it
    before applying them, so that gradients too small for float16 do not underflow to zero."""
    optimizer = keras.optimizers.Adam(PhasedSchedule(settings, steps_per_epoch))
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def stop_early(settings: Settings, epoch: int, best_epoch: int) -> bool:
    """EARLY_STOPPING_PATIENCE epochs of the last phase without a new best."""
    patience = settings.early_stopping_patience
    if not patience:
        return False
    last = phases(settings)[-1]
    if epoch < last.first_epoch:
        return False
    return epoch - max(best_epoch, last.first_epoch - 1) >= patience
