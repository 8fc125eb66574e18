# syntax=docker/dockerfile:1
# logit-router: the worker (default command) and the sample producer (python -m worker.devkit.traffic).
#
#   docker build -t logit-router:0.1.0 .
#   docker run --rm -e LOGIT_ROUTER_KAFKA__BOOTSTRAP_SERVERS=broker:9092 -p 9464:9464 logit-router:0.1.0
#
# Two stages: the builder resolves the locked dependencies into /app/.venv with uv; the runtime
# stage is a clean slim Python with only that virtualenv copied in (no uv, no pip cache, no
# source tree, no compilers: every locked dependency ships a manylinux wheel for CPython 3.11,
# and the one built here, native/, is compiled in the builder).
# docs/docker.md explains each choice.

# Same Python minor as requires-python and CI. Pin a digest too (FROM python:...@sha256:...)
# where reproducible builds matter more than picking up Debian security fixes on rebuild.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# uv from PyPI, at the version ./dev pins: PyPI is the one registry that every machine building
# this project reaches (ghcr.io, where the uv image lives, is not reachable from ours).
ARG UV_VERSION=0.13.8
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"

# Compile bytecode at install time (the runtime user cannot write __pycache__), copy rather
# than hard-link out of the cache mount, and never download a Python: use the image's own.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /src

# Dependencies first, from the lock file alone: this layer is rebuilt only when pyproject.toml
# or uv.lock change, not on every source edit. --locked refuses a stale lock; no dev group.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-default-groups --no-install-project

# Then the project itself, installed as a wheel (not editable) so /src is not needed later,
# with its compiled hot path (native/, Rust): the toolchain is copied from the official Rust
# image of the same Debian release, and gcc is its linker. Only the built wheel reaches the
# runtime stage.
COPY --from=rust:1.95-slim-bookworm /usr/local/cargo /usr/local/cargo
COPY --from=rust:1.95-slim-bookworm /usr/local/rustup /usr/local/rustup
ENV CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup PATH=/usr/local/cargo/bin:$PATH
# Builder only, so left unpinned: the versions of the base image's Debian release.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY README.md ./
COPY worker ./worker
COPY native ./native
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=cache,target=/usr/local/cargo/registry \
    uv sync --locked --no-default-groups --extra native --no-editable


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="logit-router" \
      org.opencontainers.image.description="Kafka worker: per-topic softmax, margin, routed / escalated / dead-letter" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid, so that orchestrators can check runAsNonRoot without /etc/passwd.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app

COPY --from=builder /app/.venv /app/.venv
# The example config as a default; docker-compose.yml mounts config/compose.toml over it.
COPY config/example.toml /etc/logit-router/config.toml

# In a container the HTTP endpoints must listen beyond loopback to be scraped or probed;
# publishing the port stays the operator's decision.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOGIT_ROUTER_HTTP__HOST=0.0.0.0 \
    LOGIT_ROUTER_HTTP__PORT=9464

WORKDIR /app
USER 10001:10001
EXPOSE 9464

# The worker drains on SIGTERM (finish the batch, flush, commit) within
# processing.drain_timeout_s; give it more than that before the SIGKILL (stop_grace_period).
STOPSIGNAL SIGTERM

# Liveness: /healthz answers from the worker's own event loop. The slim image has no curl, so
# Python's stdlib; any refusal, timeout or non-2xx status raises and exits non-zero.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LOGIT_ROUTER_HTTP__PORT', '9464') + '/healthz', timeout=4)"]

# Exec form: the Python process is PID 1 and receives SIGTERM itself (no shell in between).
ENTRYPOINT ["logit-router"]
CMD ["run", "--config", "/etc/logit-router/config.toml"]
