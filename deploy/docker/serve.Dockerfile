# syntax=docker/dockerfile:1
# The serving image: TorchServe 0.12 (Java 17 frontend, Python workers) with what our handler
# imports. Built from the repository root, as Compose does:
#   docker build -f deploy/docker/serve.Dockerfile -t cifar10-serve .                     (CPU)
#   docker build -f deploy/docker/serve.Dockerfile --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t cifar10-serve .   (GPU)
# No model and no key inside: model-store/ is mounted, and TorchServe makes its keys at start.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# The frontend agent (frontend/), built from source with a JDK, ASM and the pinned TorchServe's jar (it
# compiles against it) that stay in this stage; the image below carries only the agent's jar.
FROM ${PYTHON_IMAGE} AS frontend
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jdk-headless libasm-java \
 && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /tmp/requirements.txt
# pip takes no extras in constraints (tritonclient[...]): dropped from the copy
RUN sed -i -E 's/\[[^]]*\]==/==/' /tmp/requirements.txt \
 && pip install --no-cache-dir --no-deps -c /tmp/requirements.txt torchserve
COPY frontend/build.sh /build/frontend/
COPY frontend/src /build/frontend/src
RUN bash /build/frontend/build.sh /build/frontend-agent.jar

FROM ${PYTHON_IMAGE}

# PyTorch's CPU-only wheels by default; PyPI's own torch wheels carry CUDA (the GPU variant).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

# Java 17 runs TorchServe's frontend (slim images lack the man folder its installer writes to).
# procps: TorchServe stops a worker (scale down, rollout, unregister) by running `kill -9 PID`;
# without /bin/kill those management calls answer 500.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/*

# Versions from requirements.txt, read as constraints (without extras): only what serving needs is installed.
COPY requirements.txt /tmp/requirements.txt
RUN sed -i -E 's/\[[^]]*\]==/==/' /tmp/requirements.txt \
 && pip install --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple \
        -c /tmp/requirements.txt torch \
 && pip install -c /tmp/requirements.txt torchserve PyYAML pillow numpy psutil \
 && rm /tmp/requirements.txt
# ONNX Runtime, for archives built with `python -m serve archive --format onnx` (docs/portability.md).
COPY requirements.txt /tmp/requirements.txt
RUN sed -i -E 's/\[[^]]*\]==/==/' /tmp/requirements.txt \
 && pip install -c /tmp/requirements.txt onnxruntime \
 && rm /tmp/requirements.txt

RUN useradd --create-home --uid 1000 model-server
WORKDIR /home/model-server
# The repository's config, changed in three places: the APIs listen on the container's interfaces
# (Compose publishes management and metrics on the host's loopback only), and the metrics file and
# the frontend agent are named by their paths here.
# log4j2.xml: TorchServe's logging to the console alone (the container's log), without a line per
# request or batch; the engine's log driver bounds it (docker-compose.yml: logging).
COPY config.properties deploy/torchserve/metrics.yaml deploy/k8s/base/log4j2.xml ./
COPY --from=frontend /build/frontend-agent.jar /home/model-server/frontend-agent.jar
# container.entrypoint: the CMD (a clean stop on SIGTERM); container.healthcheck: HEALTHCHECK and the Kubernetes
# probes; container.drain: the Kubernetes preStop hook.
COPY container/ ./container/
RUN sed -i -e 's#=http://127\.0\.0\.1:#=http://0.0.0.0:#' \
        -e 's#^metrics_config=.*#metrics_config=/home/model-server/metrics.yaml#' \
        -e 's#-javaagent:frontend/build/frontend-agent.jar#-javaagent:/home/model-server/frontend-agent.jar#' config.properties \
 && mkdir -p model-store run logs inference-key \
 && chown model-server:model-server run logs inference-key

USER 1000:1000
# TorchServe writes key_file.json, every key, into its working directory: run/, a volume that
# Compose's operator container reads. The health check copies the inference key alone into
# inference-key/, the volume of Compose's load test.
WORKDIR /home/model-server/run
ENV LOG_LOCATION=/home/model-server/logs METRICS_LOCATION=/home/model-server/logs
EXPOSE 8080 8081 8082
# Healthy once the model has a READY worker, not merely when /ping answers (container/healthcheck.py).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["env", "PYTHONPATH=/home/model-server", "python", "-m", "container.healthcheck", \
       "--key-file", "/home/model-server/run/key_file.json", \
       "--inference-key-file", "/home/model-server/inference-key/inference_key.json"]
# TorchServe in the foreground; `docker stop` (SIGTERM) stops it cleanly (container/entrypoint.py).
CMD ["env", "PYTHONPATH=/home/model-server", "python", "-m", "container.entrypoint", "--ncs", \
     "--ts-config", "/home/model-server/config.properties", "--model-store", "/home/model-server/model-store", \
     "--log-config", "/home/model-server/log4j2.xml"]
