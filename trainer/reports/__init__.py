"""What a finished run (or sweep) shows people.

Owns: the evaluation of the best model on the held-out split (`evaluation`), the tutorial's
pictures (`plots`), a run's report.html (`run_page`), and a sweep's page (`sweep_page`).

May import: `trainer.errors`, `logs`, and the parts `data`, `store`, `models`; never the recipe
modules above it. Only `evaluation` imports TensorFlow.
"""
