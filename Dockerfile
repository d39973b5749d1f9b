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
RUN useradd --system --uid 10001 --home-dir /var/lib/dlr --create-home dlr
COPY --from=build /opt/dlr /opt/dlr
ENV PATH=/opt/dlr/bin:$PATH PYTHONUNBUFFERED=1 DLR_HOST=0.0.0.0 DLR_PORT=8080 \
    DLR_DATA_DIR=/var/lib/dlr
USER dlr
WORKDIR /var/lib/dlr
EXPOSE 8080
# uvicorn drains requests in flight on SIGTERM before exiting
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"DLR_PORT\"]}/health/live', timeout=2)"]
ENTRYPOINT ["dlr-reconciler"]
CMD ["serve"]
