# syntax=docker/dockerfile:1
# The tcnet image: every Kubeflow component runs in it (components/image.py names it; `make image`
# builds it). Base: python:3.11-slim, not nvidia/cuda. The torch 2.14.1 wheel pinned in
# requirements.lock brings its own CUDA 13 user-space libraries as nvidia-* pip packages (cuBLAS,
# cuDNN, NCCL, ...), so a CUDA base image would only add a second, unused copy of them (several GB).
# A GPU node needs just the NVIDIA driver (CUDA 13: driver >= 580) and the container toolkit, which
# the NVIDIA GPU operator installs; the same image runs on CPU nodes. Python 3.11 = the version the
# lock was generated with (tests/test_lock.py checks both).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    HOME=/home/tcnet

# git: DVC clones the data repository at a revision (components/fetch_data.py).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

# Non-root user (uid 1000, group 0 so OpenShift's arbitrary uids can write too). The KFP v2
# launcher stages artifacts under /minio, /s3 and /gcs: create them writable for that user.
RUN useradd --uid 1000 --gid 0 --create-home --home-dir /home/tcnet tcnet \
    && mkdir -p /app /minio /s3 /gcs \
    && chown -R 1000:0 /app /minio /s3 /gcs /home/tcnet \
    && chmod -R g+rwX /app /minio /s3 /gcs /home/tcnet

WORKDIR /app
COPY requirements.lock ./
# The dependencies first, at the exact versions of requirements.lock (the same constraints file as
# `make setup` and CI): this layer, gigabytes with torch, survives every change to tcnet's code.
# (The pip cache mount is not in the image. PIP_CACHE_DIR points pip at it: HOME is /home/tcnet
# here, so pip's default would be a folder in the image.)
RUN --mount=type=cache,target=/root/.cache/pip \
    PIP_CACHE_DIR=/root/.cache/pip pip install -c requirements.lock -r requirements.lock
COPY pyproject.toml README.md ./
COPY tcnet ./tcnet
RUN --mount=type=cache,target=/root/.cache/pip \
    PIP_CACHE_DIR=/root/.cache/pip pip install --no-deps -c requirements.lock . \
    && pip check \
    && rm -rf build tcnet.egg-info
COPY params.yaml ./
COPY paper ./paper

# The commit the image was built from (`make image` passes it): a pod has no .git, so MLflow's
# tcnet.git_commit tag comes from here (tcnet.provenance). Last, so a new commit rebuilds no layer above.
ARG GIT_COMMIT=unknown
ENV TCNET_GIT_COMMIT=${GIT_COMMIT}
LABEL org.opencontainers.image.revision=${GIT_COMMIT}

USER 1000
# Kubeflow replaces the command with its executor; `docker run IMAGE <command>` runs the tcnet CLI.
ENTRYPOINT ["tcnet"]
CMD ["--help"]
