# The training job's image. GPU by default; tests build it over a local base with CPU TensorFlow:
#   docker build -t trainer .
#   buildah bud --build-arg BASE_IMAGE=localhost/bookworm-python \
#     --build-arg TF_PACKAGE=tensorflow-cpu==2.21.0 -t trainer:test .
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# tensorflow[and-cuda] brings CUDA and cuDNN from pip; the node brings the driver.
ARG TF_PACKAGE="tensorflow[and-cuda]==2.21.0"
# A CA bundle for pip where TLS to the index is intercepted (the local container test).
ARG PIP_CERT=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY trainer ./trainer
RUN /opt/venv/bin/pip install --no-cache-dir ${PIP_CERT:+--cert "$PIP_CERT"} "${TF_PACKAGE}" . \
    && /opt/venv/bin/python -c "import trainer.cli, tensorflow, keras"

FROM ${BASE_IMAGE}
# Space-separated keras.applications names whose ImageNet weights (no top) are baked in, so
# that pods never download them, e.g. --build-arg BAKE_WEIGHTS="ResNet50 EfficientNetB0".
ARG BAKE_WEIGHTS=""
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KERAS_HOME=/home/trainer/.keras \
    BAKED_KERAS_HOME=/opt/keras \
    WORK_DIR=/tmp/trainer \
    DATASET=cifar10 \
    BACKBONE=ResNet50 \
    POOLING=avg \
    EPOCHS=10 \
    BATCH_SIZE=64 \
    WEIGHTS=imagenet \
    LEARNING_RATE=1e-3 \
    VALIDATION_SPLIT=0.1 \
    MONITOR=val_accuracy \
    SEED=0 \
    ARTIFACT_URI=/runs \
    LOG_LEVEL=INFO
COPY --from=build /opt/venv /opt/venv
COPY entrypoint.py /app/entrypoint.py
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/trainer trainer \
    && mkdir -p /runs /opt/keras /home/trainer/.keras /tmp/trainer \
    && chown -R 10001:10001 /runs /opt/keras /home/trainer /tmp/trainer
USER 10001
RUN if [ -n "$BAKE_WEIGHTS" ]; then \
      KERAS_HOME=/opt/keras python -c "import sys, keras; \
[getattr(keras.applications, n)(include_top=False, weights='imagenet') for n in sys.argv[1:]]" \
      $BAKE_WEIGHTS; \
    fi
WORKDIR /home/trainer
ENTRYPOINT ["python", "/app/entrypoint.py"]
