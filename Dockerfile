# syntax=docker/dockerfile:1
# fhir-server: FHIR R4 server. Build: docker build -t fhir-server .   Run: docker compose up (see docker-compose.yml)
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Unprivileged runtime user; /app/data holds the SQLite database when that store is used (a volume).
RUN groupadd --system --gid 10001 fhir \
    && useradd --system --uid 10001 --gid fhir --home-dir /app --no-create-home --shell /usr/sbin/nologin fhir

# DejaVu Sans: the Unicode font of the patient summary PDF (fhir_server/record/summary_pdf.py: é, ç, œ…).
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first (cached while only the source changes): the metadata pip needs to resolve them,
# with a stub package so that `pip install -e .` can run before the real source is copied.
COPY pyproject.toml README.md ./
RUN mkdir fhir_server && touch fhir_server/__init__.py \
    && pip install -e . \
    && rm -rf fhir_server fhir_server.egg-info

# The application. capability/ must sit beside the package: fhir_server/search/registry.py reads
# <repo root>/capability/search-parameters-r4.json at run time, relative to the package's own location.
COPY fhir_server ./fhir_server
COPY capability ./capability
COPY profiles ./profiles
# Editable install on purpose: the package stays in /app/fhir_server (not copied into site-packages), so
# Path(__file__).parents[2] is /app and /app/capability is found. A regular `pip install .` would put the
# package in site-packages, where ../capability does not exist.
RUN pip install --no-deps -e . \
    && python -m compileall -q fhir_server \
    && mkdir -p /app/data \
    && chown fhir:fhir /app/data

USER fhir

# Defaults: SQLite under /app/data unless FHIR_SERVER_STORE names another store (docker-compose.yml sets
# MongoDB). Mount a volume on /app/data to keep the SQLite database (a named volume inherits the fhir
# owner; a bind-mounted host directory must be writable by uid 10001). The code under /app stays root-owned.
ENV FHIR_SERVER_PORT=8080 \
    FHIR_SERVER_STORE=sqlite:////app/data/fhir.db
EXPOSE 8080

# No curl in -slim: probe /metadata with the standard library.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('FHIR_SERVER_PORT', '8080'); r = urllib.request.urlopen(f'http://127.0.0.1:{port}/metadata', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

CMD ["fhir-server", "serve", "--host", "0.0.0.0"]
