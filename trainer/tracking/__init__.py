"""What a run tells the outside while it runs.

Owns: MLflow tracking (`mlflow_run`), its best-effort queue of calls sent by its own thread
(`backlog`), the experiment and model registry calls (`registry`), the registered model's pyfunc
loader (`keras_pyfunc`, copied into the MLflow model; it imports Keras when loaded), progress and
ETA with Kubeflow Trainer's TrainJob status (`progress`), the progress log lines (`run_progress`),
TensorBoard scalars (`scalars`), and Vertex AI's tuned metric (`hypertune`).

May import: `trainer.errors`, `logs`, `ticker`, `redaction`, and the part `store`; never the
recipe modules above it. Only `scalars` (and `keras_pyfunc`, in the MLflow model's process)
imports TensorFlow; MLflow is imported inside the functions that use it.
"""
