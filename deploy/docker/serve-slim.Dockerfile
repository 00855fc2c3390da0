# syntax=docker/dockerfile:1
# The CPU serving image without torch: TorchServe 0.12 with a jlink'd Java 17 and ONNX Runtime, for
# archives made with `python -m serve archive --format onnx`. Built from the repository root:
#   docker build -f deploy/docker/serve-slim.Dockerfile -t cifar10-serve-slim .
# Runs like the serving image (same user, ports, config, health check, entrypoint; the archive is
# mounted at /home/model-server/model-store), but cannot serve TorchScript: `import torch` fails.
ARG DEBIAN_IMAGE=debian:12.12-slim

# --- build: a Java 17 of the modules TorchServe's frontend uses, and the Python packages ---------
FROM ${DEBIAN_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# The JDK is only here, for jlink (which strips native symbols with binutils' objcopy; slim images
# lack the man folder the JDK's installer writes to) and to build the frontend agent with ASM.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv openjdk-17-jdk-headless libasm-java binutils patch \
 && rm -rf /var/lib/apt/lists/*
# java.instrument: for the frontend agent's -javaagent.
RUN jlink --add-modules java.base,java.logging,java.management,java.naming,java.sql,java.xml,java.desktop,java.net.http,java.security.jgss,java.scripting,java.instrument,jdk.unsupported,jdk.crypto.ec,jdk.management,jdk.zipfs \
        --strip-debug --no-header-files --no-man-pages --compress=2 --output /opt/java \
 && /opt/java/bin/java -version
# Debian's pip 23 trusts its own CA bundle: pointed at the system's store (a build may mount its
# own bundle there), it never ends up in the image. Exactly the pinned packages, then pip goes.
COPY deploy/docker/requirements-slim.txt deploy/docker/torchserve-0.12.0-without-torch.patch /tmp/
RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install --cert /etc/ssl/certs/ca-certificates.crt --no-deps -r /tmp/requirements-slim.txt \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/pip uninstall -y pip setuptools \
 && rm -rf /opt/venv/lib/python3.11/site-packages/*/tests /opt/venv/lib/python3.11/site-packages/numpy/_core/tests
# TorchServe's worker imports torch at start only to send torch.Tensor answers: the patch makes that
# import optional. patch fails (and so does the build) if the file is not the one it was made for.
RUN patch --forward --fuzz=0 -p1 -d /opt/venv/lib/python3.11/site-packages < /tmp/torchserve-0.12.0-without-torch.patch \
 && /opt/venv/bin/python -c "import ts.model_service_worker, ts.protocol.otf_message_handler"

# The frontend agent (frontend/), built from source against the TorchServe above; the image carries only the jar.
COPY frontend/build.sh /build/frontend/
COPY frontend/src /build/frontend/src
RUN TORCHSERVE_JAR=/opt/venv/lib/python3.11/site-packages/ts/frontend/model-server.jar \
        bash /build/frontend/build.sh /build/frontend-agent.jar

# --- the image: Debian, Python 3.11, procps, the Java above and the venv -------------------------
FROM ${DEBIAN_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# procps: TorchServe stops a worker (scale down, rollout, unregister) by running `kill -9 PID`;
# without /bin/kill those management calls answer 500.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 procps \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
        /usr/share/doc/* /usr/share/man/* /usr/share/locale/*
COPY --from=build /opt/java /opt/java
COPY --from=build /opt/venv /opt/venv
ENV JAVA_HOME=/opt/java PATH=/opt/venv/bin:/opt/java/bin:$PATH

RUN useradd --create-home --uid 1000 model-server
WORKDIR /home/model-server
# The repository's config, changed as in serve.Dockerfile: the APIs listen on the container's
# interfaces, and the metrics file and the frontend agent are named by their paths here.
# log4j2.xml: TorchServe's logging to the console alone (the container's log), without a line per
# request or batch; the engine's log driver bounds it (docker-compose.yml: logging).
COPY config.properties deploy/torchserve/metrics.yaml deploy/k8s/base/log4j2.xml ./
COPY --from=build /build/frontend-agent.jar /home/model-server/frontend-agent.jar
COPY container/ ./container/
RUN sed -i -e 's#=http://127\.0\.0\.1:#=http://0.0.0.0:#' \
        -e 's#^metrics_config=.*#metrics_config=/home/model-server/metrics.yaml#' \
        -e 's#-javaagent:frontend/build/frontend-agent.jar#-javaagent:/home/model-server/frontend-agent.jar#' config.properties \
 && mkdir -p model-store run logs inference-key \
 && chown model-server:model-server run logs inference-key

USER 1000:1000
WORKDIR /home/model-server/run
ENV LOG_LOCATION=/home/model-server/logs METRICS_LOCATION=/home/model-server/logs
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["env", "PYTHONPATH=/home/model-server", "python", "-m", "container.healthcheck", \
       "--key-file", "/home/model-server/run/key_file.json", \
       "--inference-key-file", "/home/model-server/inference-key/inference_key.json"]
CMD ["env", "PYTHONPATH=/home/model-server", "python", "-m", "container.entrypoint", "--ncs", \
     "--ts-config", "/home/model-server/config.properties", "--model-store", "/home/model-server/model-store", \
     "--log-config", "/home/model-server/log4j2.xml"]
