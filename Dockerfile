# One image for every role: `serve` (default), `worker`, `migrate`, `prune`, given as arguments.
# The base is pinned to a patch release; pin it by digest too where your registry allows
# (docker build --build-arg BASE=python:3.11.14-slim-bookworm@sha256:…).
ARG BASE=python:3.11.14-slim-bookworm
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies from the lock, every file checked against its hash; then the project alone.
COPY deploy/requirements.lock ./
RUN python -m venv /opt/dlr && /opt/dlr/bin/pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY migrations ./migrations
RUN /opt/dlr/bin/pip install --no-deps .

FROM ${BASE}
RUN groupadd --system --gid 10001 dlr \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/dlr --create-home dlr
COPY --from=build /opt/dlr /opt/dlr
# No embedded PostgreSQL here (the `embedded` extra is not in the lock): set DLR_DATABASE_URL.
# The root filesystem may be read-only: only DLR_DATA_DIR (the worker's spool) and /tmp are
# written to.
ENV PATH=/opt/dlr/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 DLR_HOST=0.0.0.0 \
    DLR_PORT=8080 DLR_WORKER_PORT=9090 DLR_DATA_DIR=/var/lib/dlr
USER 10001:10001
WORKDIR /var/lib/dlr
# serve on 8080; worker's probes and metrics on 9090
EXPOSE 8080 9090
# uvicorn drains requests in flight on SIGTERM before exiting
STOPSIGNAL SIGTERM
# Live if whichever of serve (DLR_PORT) and worker (DLR_WORKER_PORT) runs here answers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import os, sys, urllib.request\nfor port in (os.environ['DLR_PORT'], os.environ['DLR_WORKER_PORT']):\n    try:\n        urllib.request.urlopen(f'http://127.0.0.1:{port}/health/live', timeout=1); sys.exit(0)\n    except OSError: pass\nsys.exit(1)"]
ENTRYPOINT ["dlr-reconciler"]
CMD ["serve"]
