# syntax=docker/dockerfile:1
# The training job; the same image archives a run (python -m serve archive) and runs the
# operator's commands (python -m serve rollout / set-default / scale ...). Built from the
# repository root, as Compose does:
#   docker build -f deploy/docker/train.Dockerfile -t cifar10-train .                     (CPU)
#   docker build -f deploy/docker/train.Dockerfile --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t cifar10-train .   (GPU)
# The target `loadtest` adds Locust and loadtests/ (Compose's locust service).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
FROM ${PYTHON_IMAGE} AS base

# PyTorch's CPU-only wheels by default; PyPI's own torch wheels carry CUDA (the GPU variant).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

# Versions from requirements.txt, read as constraints: only what these jobs need is installed. pip takes
# no extras in constraints (tritonclient[...]): they are dropped from the copy.
WORKDIR /app
COPY requirements.txt ./
RUN sed -i -E 's/\[[^]]*\]==/==/' requirements.txt \
 && pip install --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple \
        -c requirements.txt torch torchvision \
 && pip install -c requirements.txt numpy pillow tqdm matplotlib torch-model-archiver requests PyYAML
# Every run also exports model.onnx, checked with ONNX Runtime; the operator's commands
# (python -m serve) read processes with psutil and config.properties with javaproperties. A layer of
# its own: the one above, with torch, stays cached.
RUN pip install -c requirements.txt onnx onnxruntime onnxscript psutil javaproperties

# uid 1000, as the serve image's user: TorchServe's key_file.json and the inference key its health
# check copies (mode 600, on shared volumes) are then readable by the operator's and the load
# test's containers.
RUN useradd --create-home --uid 1000 trainer \
 && mkdir -p data models model-store reports \
 && chown trainer:trainer data models model-store reports
COPY config.properties ./
COPY model/ model/
COPY handler/ handler/
COPY train/ train/
COPY serve/ serve/
COPY repo/ repo/
COPY container/ container/
COPY harness/ harness/
# serve.server names the frontend agent's module (the operator's commands start no TorchServe here).
COPY frontend/__init__.py frontend/

FROM base AS loadtest
# The load test checks each answer against the answer contract (harness.answers: a JSON Schema).
RUN pip install -c requirements.txt locust jsonschema
COPY loadtests/ loadtests/
USER 1000:1000
CMD ["locust", "--config", "loadtests/steady.conf"]

# The default target (the last stage): the training job. data/ (the data set and its decoded
# cache) and models/ are volumes in Compose.
FROM base AS train
USER 1000:1000
CMD ["python", "-m", "train"]
