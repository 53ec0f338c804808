# CPU image of the dashboard on the embedded default (SQLite + LocalCluster). For GPU see the README.
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    HELICAL_PLATFORM_HOME=/data \
    HELICAL_PLATFORM_ADDRESS=0.0.0.0 \
    HELICAL_PLATFORM_PORT=5006 \
    HELICAL_PLATFORM_ALLOW_ORIGIN=localhost:5006 \
    NUMBA_CACHE_DIR=/var/cache/helical-platform/numba

WORKDIR /opt/helical-platform
COPY pyproject.toml README.md ./
COPY app ./app
COPY dashboards ./dashboards
COPY inference ./inference
COPY store ./store
COPY panel_serve.py ./
# umap-learn's kernels compiled once here (inference/numba_cache.py), not by each worker's first run
RUN pip install --no-cache-dir . && useradd --create-home --uid 1000 helical \
    && mkdir -p /data "$NUMBA_CACHE_DIR" && python -m inference.numba_cache \
    && chown helical /data && chown -R helical /var/cache/helical-platform && chmod -R go-w /var/cache/helical-platform

USER helical
VOLUME ["/data"]
EXPOSE 5006
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://localhost:{os.environ[\"HELICAL_PLATFORM_PORT\"]}/api/health', timeout=8)"
CMD panel serve panel_serve.py --index panel_serve --plugins app.rest --warm \
    --address "$HELICAL_PLATFORM_ADDRESS" --port "$HELICAL_PLATFORM_PORT" \
    --allow-websocket-origin "$HELICAL_PLATFORM_ALLOW_ORIGIN"
