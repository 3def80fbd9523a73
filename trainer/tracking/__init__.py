"""What a run tells the outside while it runs.

Owns: MLflow tracking (`mlflow_run`) and its best-effort queue of calls (`backlog`), progress and
ETA with Kubeflow Trainer's TrainJob status (`progress`), the progress log lines (`run_progress`),
TensorBoard scalars (`scalars`), and Vertex AI's tuned metric (`hypertune`).

May import: `trainer.errors`, `logs`, `ticker`, `redaction`, and the part `store`; never the
recipe modules above it. Only `scalars` imports TensorFlow; MLflow is imported inside the
functions that use it.
"""
