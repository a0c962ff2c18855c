# Image for every app service (migrate, celery_worker, celery_beat, api) and, as the
# `flower` target, for the monitoring profile. Build: docker-compose build (or docker build .).

# --- deps: the pinned runtime dependencies in a venv; rebuilt only when requirements.txt changes.
FROM python:3.11-slim-bookworm AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --requirement /tmp/requirements.txt

# --- wheel: the application itself as a wheel, so the final stage needs no build tools.
FROM deps AS wheel
WORKDIR /src
COPY pyproject.toml ./
COPY app ./app
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels .

# --- runtime: no compilers, no pip cache, no secrets; runs as uid/gid 1000.
FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    WORKER_HEARTBEAT_FILE=/tmp/worker.heartbeat \
    BEAT_HEARTBEAT_FILE=/tmp/beat.heartbeat
# Real passwd/group entries (Celery and some libraries look the user up); the only directory the
# app owns is beat's state directory, which compose mounts as a volume.
RUN groupadd --gid 1000 app \
 && useradd --uid 1000 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
 && mkdir -p /var/lib/celerybeat \
 && chown app:app /var/lib/celerybeat
COPY --from=deps /opt/venv /opt/venv
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-deps --no-index /tmp/wheels/*.whl && rm -rf /tmp/wheels
COPY docker/entrypoint.sh /usr/local/bin/docker-entrypoint
COPY docker/healthcheck.sh /usr/local/bin/docker-healthcheck
COPY docker/migrate.sh /usr/local/bin/docker-migrate
COPY docker/flower.sh /usr/local/bin/docker-flower
COPY docker/secrets.sh /usr/local/bin/docker-secrets
WORKDIR /home/app
USER 1000:1000
# The worker touches its heartbeat file every ~2 s; compose overrides this for beat and api.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["docker-healthcheck", "worker"]
ENTRYPOINT ["docker-entrypoint"]
CMD ["reminders", "--help"]

# --- flower: the monitoring UI (profile `monitoring`), kept out of the app image.
FROM runtime AS flower
USER 0
RUN pip install flower==2.2.0
USER 1000:1000

# --- app: the default target, last so that a plain `docker build .` gives the app image.
FROM runtime AS app
