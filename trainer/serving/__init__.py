"""Serving exports of a trained model, and running them.

Owns: EXPORT's formats and whether their packages are installed (`formats`), writing each format
(`converters`), exporting and checking a model against best.h5 (`export`), loading each format
with its own runtime (`runtimes`), and `trainer predict` (`predict`).

May import: `trainer.errors`, `logs`, `ticker`, and the parts `data`, `store`, `models`; never
the recipe modules above it. `formats` imports no TensorFlow (the CLI reads it at start);
`runtimes` imports each runtime in the class that loads its format, so an ONNX or LiteRT check
runs without it.
"""
