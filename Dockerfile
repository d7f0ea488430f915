# raftkv node image: `docker build -t distributed-kv-store .`
#
# One node per container, started as `raftkv serve` and configured by the seed's environment
# variables (RAFT_NODE_ID, KV_HTTP_PORT, KV_RAFT_PORT, KV_LOG_LEVEL) plus KV_CONFIG, KV_DATA_DIR
# and KV_LOG_FORMAT. The default config is config/docker-cluster.yaml (docker-compose.yml's
# three nodes); Kubernetes mounts its own from a ConfigMap and points KV_CONFIG at it.
# tests/unit/deploy/test_dockerfile.py checks this file against the application's defaults.

# --- build: raftkv and its dependencies in a virtualenv (all ship wheels: no compiler) ---------
# Exactly the versions in uv.lock (`uv sync --frozen` never re-resolves), the same set the tests
# ran against; uv's version is the one scripts/_venv.sh pins. Non-editable, without test extras.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
RUN pip install uv==0.13.9
WORKDIR /src
COPY . .
RUN uv sync --frozen --no-editable --python /usr/local/bin/python

# --- run -------------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Only the virtualenv comes over: no source tree, no build tools. Same base, same paths.
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and fsGroup can match it.
RUN groupadd --system --gid 10001 raftkv \
    && useradd --system --uid 10001 --gid raftkv --home-dir /data --no-create-home raftkv \
    && mkdir -p /data \
    && chown raftkv:raftkv /data
COPY config/ /etc/raftkv/
ENV KV_CONFIG=/etc/raftkv/docker-cluster.yaml \
    KV_DATA_DIR=/data \
    KV_LOG_LEVEL=info \
    KV_LOG_FORMAT=console
# Raft log, snapshots and state live here; a new container on the same volume resumes the node.
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
# Node 1's defaults (HTTP API, Raft peers). Other nodes set KV_HTTP_PORT / KV_RAFT_PORT.
EXPOSE 8081 9001
# Asks the node itself on the port it listens on, resolved from the same config and env the
# node uses (KV_HTTP_PORT or the config file). python:slim has no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; from raftkv.server.config import Address, load_settings; a = load_settings().http_listen; h = '127.0.0.1' if a.host in ('0.0.0.0', '::') else a.host; u.urlopen(f'http://{Address(h, a.port)}/health', timeout=2)"]
# SIGTERM (docker stop, Kubernetes) stops the node gracefully; `raftkv serve` handles it itself.
STOPSIGNAL SIGTERM
ENTRYPOINT ["raftkv", "serve"]
CMD []
