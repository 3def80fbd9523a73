"""The classifier: a keras.applications backbone without its top, global pooling, a Dense
softmax head.

Owns: the backbone name table, sizes and preprocessing families (`backbones`, no TensorFlow:
settings and options read it), and building the model and loading its weights (`classifier`).

May import: `trainer.errors`, `logs`; never the recipe modules above it.
"""
