# The training job's image: GPU by default (pip brings CUDA and cuDNN, the node brings the driver).
#   docker build -t trainer .
#   docker build --build-arg BAKE_WEIGHTS="ResNet50 EfficientNetB0" -t trainer .
# The base and the TensorFlow package are build arguments, so the container test builds this same
# file over a local Debian base with CPU TensorFlow (scripts/container-test.sh):
#   buildah bud --build-arg BASE_IMAGE=localhost/trainer-test-base:bookworm \
#     --build-arg TF_PACKAGE=tensorflow-cpu==2.21.0 -t trainer:test .
# Either base works: python:3.11-slim (/usr/local/bin/python3) or Debian's python3 + python3-venv.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TF_PACKAGE="tensorflow[and-cuda]==2.21.0"
# pip reads these from the environment and ignores them while empty: a package index mirror, and
# a CA bundle inside the base image where TLS to the index is intercepted (the container test).
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_CERT=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY trainer ./trainer
# The extras: the export runtimes (onnx, tf2onnx, onnxruntime, ai-edge-litert) and MLflow's client.
RUN /opt/venv/bin/pip install --no-cache-dir "${TF_PACKAGE}" ".[export,tracking]" \
    && /opt/venv/bin/python -c "import trainer.cli, tensorflow, keras, onnxruntime, mlflow"

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="trainer" \
      org.opencontainers.image.description="Transfer-learning training job for keras.applications classifiers"
# No training settings here: their defaults are the code's (`trainer train --help`), so that what a
# platform gives (SageMaker's channels and hyperparameters, Vertex AI's AIP_MODEL_DIR) outranks
# them. A relative ARTIFACT_URI (./runs) is under the WORKDIR, /home/trainer/runs.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KERAS_HOME=/home/trainer/.keras \
    BAKED_KERAS_HOME=/opt/keras \
    MPLCONFIGDIR=/tmp/matplotlib
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/trainer --shell /bin/sh trainer \
    && mkdir -p /home/trainer/runs /opt/keras /home/trainer/.keras \
    && chown -R 10001:10001 /opt/keras /home/trainer
USER 10001
WORKDIR /home/trainer
ENTRYPOINT ["python", "/app/entrypoint.py"]
# The large layers come last: with buildah's vfs storage every step after them copies them again.
COPY entrypoint.py /app/entrypoint.py
COPY --from=build /opt/venv /opt/venv
# Space-separated keras.applications names (exact case) whose ImageNet weights without the top
# are baked in, so pods never download them. They go to BAKED_KERAS_HOME, outside KERAS_HOME
# (an empty volume on Kubernetes would hide them); the job links them into the Keras cache.
ARG BAKE_WEIGHTS=""
RUN if [ -n "$BAKE_WEIGHTS" ]; then \
      KERAS_HOME="$BAKED_KERAS_HOME" python -c "import sys, keras; \
[getattr(keras.applications, n)(include_top=False, weights='imagenet') for n in sys.argv[1:]]" \
      $BAKE_WEIGHTS; \
    fi
