# Image and cluster targets, included by the Makefile (which defines BIN and venv). docs/docker.md
# and docs/kubernetes.md walk through them.
#   make image IMAGE=my.registry/trainer:0.1.0 [BAKE_WEIGHTS="ResNet50 MobileNetV2"]
#   make docker-run ENV_FILE=trainer.env
#   make k8s-apply OVERLAY=single-gpu IMAGE=... RUN_ID=resnet50-cifar10-1 [QUEUE=... PRIORITY=...]
IMAGE ?= registry.example.com/trainer:0.1.0
DOCKER ?= docker
KUBECTL ?= kubectl
# Build arguments: the base, the TensorFlow package, backbones whose ImageNet weights to bake in.
BASE_IMAGE ?=
TF_PACKAGE ?=
BAKE_WEIGHTS ?=
# docker-run: settings and credentials as KEY=value lines; runs and the Keras cache on this host.
ENV_FILE ?= trainer.env
RUNS_DIR ?= $(CURDIR)/runs
KERAS_CACHE ?= $(HOME)/.keras
# Kubernetes: the overlay, the run (the Job's, JobSet's or TrainJob's name), an optional Kueue
# queue (a LocalQueue) and priority (a WorkloadPriorityClass), and a namespace.
OVERLAY ?= single-gpu
RUN_ID ?=
QUEUE ?=
PRIORITY ?=
NAMESPACE ?=

build_args = $(foreach a,BASE_IMAGE TF_PACKAGE BAKE_WEIGHTS,$(if $($(a)),--build-arg $(a)="$($(a))"))
namespace = $(if $(NAMESPACE),--namespace $(NAMESPACE))
render = IMAGE="$(IMAGE)" RUN_ID="$(RUN_ID)" QUEUE="$(QUEUE)" PRIORITY="$(PRIORITY)" \
	KUBECTL="$(KUBECTL)" k8s/render.sh $(OVERLAY)
# The workload's name: RUN_ID, else the overlay's (trainer-<overlay>); the label on its pods.
job = $(or $(RUN_ID),trainer-$(OVERLAY))
pods = $(if $(filter jobset% trainjob%,$(OVERLAY)),jobset.sigs.k8s.io/jobset-name,batch.kubernetes.io/job-name)=$(job)

.PHONY: image push docker-run k8s-render k8s-apply k8s-logs fetch

image:
	$(DOCKER) build $(build_args) -t $(IMAGE) .

push:
	$(DOCKER) push $(IMAGE)

# All GPUs of this machine, as this host's user so that ./runs stays yours.
docker-run:
	@test -f "$(ENV_FILE)" || { echo "no $(ENV_FILE): write the settings there as KEY=value lines" \
		"(DATASET=cifar10, BACKBONE=ResNet50, ...), or give ENV_FILE=path"; exit 2; }
	mkdir -p "$(RUNS_DIR)" "$(KERAS_CACHE)"
	$(DOCKER) run --rm --gpus all --shm-size=8g --user "$$(id -u):$$(id -g)" \
		--env-file "$(ENV_FILE)" $(if $(RUN_ID),--env RUN_ID=$(RUN_ID)) \
		--volume "$(RUNS_DIR):/home/trainer/runs" --volume "$(KERAS_CACHE):/home/trainer/.keras" \
		$(IMAGE) $(ARGS)

k8s-render:
	@$(render)

k8s-apply:
	$(render) | $(KUBECTL) apply $(namespace) -f -

# Follows every pod of the run (all workers of a multi-node Job, JobSet or TrainJob), each line
# prefixed by its pod.
k8s-logs:
	$(KUBECTL) logs $(namespace) --follow --prefix --all-containers --max-log-requests 16 \
		--selector $(pods)

fetch: venv
	@test -n "$(RUN_ID)" || { echo "usage: make fetch RUN_ID=<run> [ARTIFACT_URI=s3://...] [TO=models]"; exit 2; }
	$(BIN)/trainer fetch $(RUN_ID) --to $(or $(TO),models) $(if $(ARTIFACT_URI),--artifact-uri $(ARTIFACT_URI))
