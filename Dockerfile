# syntax=docker/dockerfile:1
# One image for every skuforge service; the entrypoint is `skuforge` (`run matting`, `serve console`...).
#   CPU:  docker build -t skuforge:0.1.0 .
#   CUDA: docker build --build-arg VARIANT=cuda -t skuforge:0.1.0-cuda .
# The CUDA variant takes CUDA from the wheels (torch's nvidia-* packages, onnxruntime-gpu); the host
# brings only the driver (NVIDIA Container Toolkit / the GPU operator). Triton runs from the
# nvidia-pytriton wheel, which needs glibc >= 2.35 (bookworm has 2.36).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
RUN case "$VARIANT" in cpu|cuda) ;; *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 2;; esac
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/skuforge
WORKDIR /src
# constraints.txt pins every distribution installed here to the version CI tests with (`make constraints`
# writes it from the venv `make setup` builds), so a rebuild months later installs the same torch,
# diffusers and onnxruntime; only onnxruntime-gpu, which that CPU venv cannot hold, follows pyproject.
COPY pyproject.toml README.md constraints.txt ./
COPY schemas schemas
COPY shared shared
COPY services services
COPY devstack devstack
COPY skuforge_cli skuforge_cli
# cpu: ONNX Runtime on CPU, the console, Triton with the composite backend.
# cuda: ONNX Runtime's CUDA provider, and diffusion + LoRA (torch) for Triton on a GPU.
RUN if [ "$VARIANT" = cuda ]; then extras=gpu,console,serve,diffusion; else extras=cpu,console,serve; fi \
 && /opt/skuforge/bin/pip install -c constraints.txt --upgrade pip \
 && /opt/skuforge/bin/pip install -c constraints.txt ".[${extras}]" \
 && /opt/skuforge/bin/skuforge --help > /dev/null

FROM ${PYTHON_IMAGE}
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="skuforge" \
      org.opencontainers.image.description="skuforge services (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
# libgomp: ONNX Runtime and torch's OpenMP; tini reaps Triton's child processes and forwards SIGTERM.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 skuforge \
 && useradd --uid 10001 --gid 10001 --home-dir /home/skuforge --create-home skuforge \
 && mkdir -p /data/store /data/console \
 && chown -R 10001:10001 /data
# /data: compose mounts its named volumes there (the store, the console's task table). A new named
# volume takes the ownership of the image's folder it is mounted on; without these folders it would be
# root's, and the services, which run as 10001, could not write to it.
COPY --from=build /opt/skuforge /opt/skuforge
ENV PATH=/opt/skuforge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SKUFORGE_METRICS_HOST=0.0.0.0 \
    SKUFORGE_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/skuforge
ENTRYPOINT ["/usr/bin/tini", "--", "skuforge"]
CMD ["--help"]
