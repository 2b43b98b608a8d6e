# syntax=docker/dockerfile:1
# Needs BuildKit, Docker's default builder since Engine 23.0 and in `docker compose` v2 (on an
# older engine: DOCKER_BUILDKIT=1 docker build ...); the syntax line above, read only by BuildKit,
# pins the Dockerfile frontend to the stable 1.x syntax.
#
# fedshield on Flower's Docker images (see docker-compose.yml and the README's
# "Real federation with Docker").
#
# The SuperLink runs the ServerApp and each SuperNode runs its ClientApps as subprocesses
# (`--isolation subprocess`), so both images need fedshield (with its configs, fedshield/conf)
# and torch inside. One file builds both, from the base named by FLWR_IMAGE:
#
#   docker build --build-arg FLWR_IMAGE=flwr/superlink -t fedshield-superlink:0.1.0 .
#   docker build --build-arg FLWR_IMAGE=flwr/supernode -t fedshield-supernode:0.1.0 .
#
# Versions are pinned to pyproject.toml's: Flower 1.41.0, torch 2.14.1, torchvision 0.29.1.
# The Ubuntu variant of Flower's images, since torch ships no wheels for Alpine (musl).
ARG FLWR_IMAGE=flwr/supernode
ARG FLWR_VERSION=1.41.0
ARG FLWR_IMAGE_VARIANT=py3.13-ubuntu24.04
FROM ${FLWR_IMAGE}:${FLWR_VERSION}-${FLWR_IMAGE_VARIANT}
ARG FLWR_VERSION

# CPU wheels: the default index would pull the CUDA build and its libraries (several GB).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m pip install --index-url "${TORCH_INDEX_URL}" torch==2.14.1 torchvision==0.29.1

# The app, a regular install: its configs are package data (site-packages/fedshield/conf). The
# sources stay in /app/fedshield, the project folder that `flwr run /app/fedshield` submits.
WORKDIR /app/fedshield
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app src ./src
# The base image already holds flwr 1.41.0: keep the pin, drop the [simulation] extra (Ray),
# as Flower's Docker guides do.
RUN sed -i 's/"flwr\[simulation\]==/"flwr==/' pyproject.toml \
    && python -m pip install . \
    && python -c "from importlib.metadata import version; import fedshield.config as c; assert (c.CONFIG_DIR / 'config.yaml').is_file(); assert version('flwr') == '${FLWR_VERSION}'"

# Results of `flwr run` (output-dir="/app/outputs/..."): a named volume in docker-compose.yml.
RUN mkdir -p /app/outputs
WORKDIR /app
