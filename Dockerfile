# syntax=docker/dockerfile:1
# receiver: build a wheel in one stage, install it into a clean slim image in the next, so the
# final image carries no compilers, no pip cache and no source tree.
#
#   docker build -t receiver .
#   docker run --rm -p 8000:8000 -e RECEIVER_SECRET_KEYS=... receiver
#   docker run --rm -e ... receiver check        # any other subcommand replaces "serve ..."

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# pyproject.toml names README.md as the long description and LICENSE as its license file, so
# the build needs them too; requirements.lock pins every dependency with its hashes.
COPY pyproject.toml README.md LICENSE requirements.lock ./
COPY receiver ./receiver
# Wheels of every dependency exactly as locked (all publish manylinux wheels, so no compiler is
# needed), then the project's own wheel without resolving anything; the runtime stage installs
# from these offline. Regenerate the lock with the command at its top.
RUN pip wheel --wheel-dir /wheels --require-hashes -r requirements.lock \
    && pip wheel --wheel-dir /wheels --no-deps . \
    && cp requirements.lock /wheels/

FROM python:3.11-slim AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed numeric id so Kubernetes' runAsNonRoot can check it and volumes can be chowned to it.
RUN groupadd --system --gid 10001 receiver \
    && useradd --system --uid 10001 --gid receiver --home-dir /var/lib/receiver \
       --create-home --shell /usr/sbin/nologin receiver
# Bind-mount the wheels instead of COPYing them, so they never become a layer of the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels --require-hashes -r /wheels/requirements.lock \
    && pip install --no-index --no-deps /wheels/flux_receiver-*.whl \
    && pip check
# The defaults (sqlite:///receiver.db, a local "archive" folder) resolve here, in a folder the
# service user owns; real deployments set RECEIVER_LEDGER_URL and an S3 destination instead.
WORKDIR /var/lib/receiver
USER 10001:10001
EXPOSE 8000
# uvicorn drains for worker.shutdown_grace_seconds + 1 (21 s by default) after SIGTERM: give
# `docker stop` at least that (compose: stop_grace_period; Kubernetes:
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# No curl in the slim image: the standard library is enough. urlopen raises on a non-2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["receiver"]
# Listen on every interface of the container; the proxy's X-Forwarded-* headers are honoured
# from the addresses in server.trusted_proxies (RECEIVER_SERVER__TRUSTED_PROXIES).
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
