# syntax=docker/dockerfile:1
# apideck-proxy container image.
#
# Two stages so the final image holds the interpreter and one virtualenv, and nothing that
# built it (no pip cache, no sources, no compilers). Both stages use the same base tag on
# purpose: the venv's `python` is a symlink into the base image's /usr/local.

FROM python:3.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# README.md is read by the build backend (pyproject `readme`), so it is part of the build input.
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# Every dependency ships a manylinux wheel for CPython 3.11, so no compiler is needed here
# either; pip is removed afterwards because nothing at run time installs packages.
RUN pip install . \
    && pip uninstall --yes pip


FROM python:3.11-slim-bookworm

# CI passes the real values with --build-arg; the defaults keep a local build working.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="apideck-proxy" \
      org.opencontainers.image.description="Local HTTP sidecar for Apideck Unify that coalesces OAuth token refreshes per connection" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}"

# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER, and the
# manifests pin runAsUser to the same number.
RUN groupadd --system --gid 10001 proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin proxy

COPY --from=builder /opt/venv /opt/venv

# APIDECK_PROXY_HOST is deliberately NOT set here: the proxy keeps its 127.0.0.1 default.
# It injects the Apideck API key into every request, so anyone who can reach its port can
# spend that key. Both supported layouts share one network namespace with the app (a
# Kubernetes pod; compose `network_mode: service:apideck-proxy`), where loopback is enough.
# If the app truly lives in another namespace, set APIDECK_PROXY_HOST=0.0.0.0 at run time
# and publish the port only on 127.0.0.1 (`-p 127.0.0.1:8475:8475`) or keep it on a
# private network.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    APIDECK_PROXY_LOG_FORMAT=json

USER 10001:10001
EXPOSE 8475

# slim has no curl: the stdlib does the probe. It reads the port from the same variable the
# proxy does, and bypasses any HTTP(S)_PROXY set for the container (those would send a
# loopback probe elsewhere). An exception (refused, timeout, non-2xx) exits 1 = unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as r; r.build_opener(r.ProxyHandler({})).open('http://127.0.0.1:%s%s' % (os.environ.get('APIDECK_PROXY_PORT', '8475'), sys.argv[1]), timeout=2)", "/_proxy/healthz"]

# Exec form: the proxy is PID 1 and receives SIGTERM itself (no shell in between), so it can
# turn readiness off, drain, and exit 0 within APIDECK_PROXY_SHUTDOWN_GRACE_S.
STOPSIGNAL SIGTERM
ENTRYPOINT ["apideck-proxy"]
