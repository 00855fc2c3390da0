# A stand-in for the gateway image of deploy/k8s's overlays (nginxinc/nginx-unprivileged), built from
# Debian's nginx where that registry cannot be reached: nginx on PATH, run as uid 101 as that image
# runs. tests/e2e/test_kube_play.py builds it on the serving image's base.
ARG BASE=localhost/cifar10-debian:bookworm-minbase
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/*
USER 101:101
