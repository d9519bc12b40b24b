# syntax=docker/dockerfile:1
# Targets: `runtime` (CPU: ingest, CPU workers, migrate, beat) and `worker-gpu` (inference on
# NVIDIA GPUs through Keras's JAX backend; no TensorFlow GPU build needed).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 TF_CPP_MIN_LOG_LEVEL=2

# ---- dependencies, built once and copied into the slim final stages ----
FROM base AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
# Empty package markers (setup.py maps migrations/ and models/ into the package) let pip resolve
# the dependencies before the code is copied, so a code change does not reinstall them.
RUN for p in pulmoscreen ingest worker reporting training migrations models; do \
        mkdir -p $p && touch $p/__init__.py; done \
    && mkdir -p migrations/versions && pip install . && pip uninstall -y pulmoscreen

FROM build AS build-gpu
RUN pip install "jax[cuda12]>=0.4.30,<1"

# ---- the application as a wheel: it carries the migrations and the shipped model ----
FROM build AS wheel
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- CPU image ----
FROM base AS runtime
RUN useradd --create-home --uid 10001 pulmo && mkdir -p /data/inbox /data/reports /app \
    && chown -R pulmo /data /app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH KERAS_BACKEND=tensorflow PULMO_DATA_DIR=/data
# Mounted, not copied: the wheel stays out of the image's layers once installed.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels pip install --no-deps /wheels/*.whl
WORKDIR /app
# The migrate service runs `alembic upgrade head` here; the scripts come from the package.
COPY alembic.ini ./
USER pulmo
CMD ["pulmoscreen", "--help"]

# ---- GPU inference worker ----
FROM base AS worker-gpu
RUN useradd --create-home --uid 10001 pulmo && mkdir -p /data/inbox /data/reports /app \
    && chown -R pulmo /data /app
COPY --from=build-gpu /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH KERAS_BACKEND=jax PULMO_DATA_DIR=/data
# Mounted, not copied: the wheel stays out of the image's layers once installed.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels pip install --no-deps /wheels/*.whl
WORKDIR /app
USER pulmo
CMD ["celery", "-A", "worker", "worker", "-Q", "inference", "-P", "solo", "-n", "gpu@%h"]
