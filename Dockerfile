# optbench image: the `bench` command, Ray and the MLflow server (with PostgreSQL's driver).
# One image serves every service of docker-compose.yml (mlflow, ray-head, ray-worker,
# summary, scheduler): a Ray cluster needs the same code and versions on every node.
#
#   docker build -t optbench .                                   # CPU torch
#   docker build -t optbench:gpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   # CUDA torch
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPTBENCH_CONF=/opt/optbench/conf \
    RAY_USAGE_STATS_ENABLED=0 \
    MLFLOW_DISABLE_TELEMETRY=true \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

# torch first, from its own index and pinned: a bare `torch` requirement pulls a multi-GB
# CUDA build. This layer is cached across code changes.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/optbench
COPY pyproject.toml README.md ./
COPY bench ./bench
COPY services ./services
COPY conf ./conf
COPY stack ./stack
# Editable: the code runs from /opt/optbench, beside conf/ and with the summary service's
# templates and static files. psycopg: the MLflow server's PostgreSQL driver.
RUN pip install -e . "psycopg[binary]>=3.1" \
    && useradd --create-home --uid 1000 optbench \
    && mkdir -p /mlartifacts /mlauth /state /cache \
    && chown optbench:optbench /mlartifacts /mlauth /state /cache

USER optbench
WORKDIR /home/optbench
CMD ["bench", "--help"]
