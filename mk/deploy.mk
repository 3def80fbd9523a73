# Image and cluster targets; included by the Makefile.
IMAGE ?= registry.example.com/trainer:0.1.0
OVERLAY ?= single-gpu
ENV_FILE ?= trainer.env
RUN_ID ?=
NAMESPACE ?= default

.PHONY: image push docker-run k8s-render k8s-apply k8s-logs fetch

image:
	docker build -t $(IMAGE) .

push:
	docker push $(IMAGE)

# All GPUs of this workstation; settings and credentials from $(ENV_FILE) (KEY=value lines).
docker-run:
	mkdir -p runs
	docker run --rm --gpus all --shm-size=8g --user $$(id -u):$$(id -g) --env-file $(ENV_FILE) \
		-v $(CURDIR)/runs:/runs $(IMAGE)

k8s-render:
	kubectl kustomize k8s/overlays/$(OVERLAY)

k8s-apply:
	kubectl kustomize k8s/overlays/$(OVERLAY) | kubectl apply -n $(NAMESPACE) -f -

k8s-logs:
	kubectl logs -n $(NAMESPACE) -f --all-containers --prefix -l app.kubernetes.io/name=trainer

fetch: $(STAMP)
	@test -n "$(RUN_ID)" || (echo "usage: make fetch RUN_ID=<run id> [ARTIFACT_URI=s3://...]" && exit 2)
	$(BIN)/trainer fetch $(RUN_ID) --to models
