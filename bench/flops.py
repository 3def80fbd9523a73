"""Multiply-adds of one forward pass of a Keras model, counted from its layers (convolutions
and Dense; BatchNorm, activations and pooling are a small, memory-bound rest), for the MFU
figures of bench/gpu.sh and BENCHMARKS.md.

    macs = forward_macs(model)      # per image; FLOPs = 2 x MACs; training ~ 3 x forward
"""

from __future__ import annotations

from typing import Any

import keras


def forward_macs(model: Any) -> int:
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_macs(layer)
            continue
        if not hasattr(layer, "kernel") or not hasattr(layer, "output"):
            continue
        out = layer.output.shape
        kernel = tuple(layer.kernel.shape)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            # kernel (kh, kw, channels, multiplier): one filter per input channel
            total += out[1] * out[2] * kernel[0] * kernel[1] * kernel[2] * kernel[3]
        elif isinstance(layer, keras.layers.Conv2D):
            # kernel (kh, kw, channels / groups, filters)
            total += out[1] * out[2] * kernel[0] * kernel[1] * kernel[2] * kernel[3]
        elif isinstance(layer, keras.layers.Dense):
            total += kernel[0] * kernel[1]
    return int(total)
