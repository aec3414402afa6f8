# syntax=docker/dockerfile:1
#
# The mediaserver image. Build: `docker build -t mediaserver .`   Run: see deploy/README.md.
#
# Same steps as scripts/bootstrap, which CI (.ci/run) runs on every change, so CI proves them:
#   bootstrap                              this file
#   python3 -m venv .venv                  python -m venv /opt/venv           (final stage)
#   pip install --upgrade pip              python -m pip install --upgrade pip (build stage)
#   pip install -e '.[dev]'                pip wheel . + pip install mediaserver from those wheels:
#                                          the same pyproject.toml, the same pinned dependencies,
#                                          without the [dev] extra and not editable.
#   apt-get install ffmpeg opus-tools      nothing: PyAV's wheels carry their own FFmpeg and libopus
#                   tcpdump espeak-ng      (the analysis decodes with that libopus), and the code never
#                                          runs a program; these only serve the tests (opusinfo/opusdec
#                                          oracles, tcpdump captures, espeak-ng speech).
# Every wheel is manylinux and needs only libc, libstdc++, libgcc_s and zlib, which the slim base
# already has. The one Debian package added is tini (see below).
#
# Stopping: the server drains on SIGTERM (ends live calls, finalizes and uploads them for up to
# MEDIASERVER_DRAIN_TIMEOUT_S). Docker's default 10 s grace is too short for that: run with
# `docker run --stop-timeout 120 ...` (compose: stop_grace_period; Kubernetes:
# terminationGracePeriodSeconds). A journal cut short is recovered at the next start anyway.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Unpinned like scripts/bootstrap: the newest pip understands the newest wheel tags.
# hadolint ignore=DL3013
RUN python -m pip install --upgrade pip
COPY pyproject.toml README.md ./
COPY mediaserver ./mediaserver
# Wheels for the package and every pinned dependency; all of them exist as binary wheels, so the
# build stage needs no compiler.
RUN python -m pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# tini as PID 1: it forwards SIGTERM to the server only (not to its process group, so finalize
# workers are not killed mid-file) and reaps the forkserver's orphaned workers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1* \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 mediaserver \
    && useradd --system --uid 10001 --gid mediaserver --no-create-home \
       --home-dir /var/lib/mediaserver --shell /usr/sbin/nologin mediaserver \
    && install -d -o mediaserver -g mediaserver -m 0750 \
       /var/lib/mediaserver /var/lib/mediaserver/spool /var/lib/mediaserver/recordings
# Installed from the build stage's wheels only (--no-index): exactly what pyproject.toml pins.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
       --no-index --find-links=/wheels mediaserver

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MEDIASERVER_SPOOL_PATH=/var/lib/mediaserver/spool \
    MEDIASERVER_JOBS_PATH=/var/lib/mediaserver/spool/.jobs \
    AUDIO_STORAGE_PATH=/var/lib/mediaserver \
    MEDIASERVER_LOG_FORMAT=json \
    MEDIASERVER_RTP_PORT_MIN=40000 \
    MEDIASERVER_RTP_PORT_MAX=40999
# AUDIO_STORAGE_PATH rather than MEDIASERVER_STORAGE_PATH: the seed variable has the lower
# precedence, so either name set at run time (a bucket name for gcs) replaces this default.
# Object keys start with recordings/, so local recordings land in /var/lib/mediaserver/recordings.

WORKDIR /var/lib/mediaserver
USER 10001:10001
# The spool holds live calls' journals and the queue of post-call jobs (spool/.jobs, no call id):
# keep it on a volume so a restarted container recovers them.
VOLUME ["/var/lib/mediaserver/spool"]
# HTTP (signalling, API, health, metrics) and the plain-RTP port range (MEDIASERVER_RTP_PORT_*).
EXPOSE 8080/tcp 40000-40999/udp

# Python's standard library, so the image needs no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "mediaserver"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
