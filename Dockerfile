# One image for every benchop process: `benchop operator | agent | loadgen | mock-server | ...`.
# Build: hack/build-image.sh (needs a Docker engine).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY agent ./agent
# Wheels for benchop and all its dependencies (all ship manylinux wheels: no compiler needed).
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels benchop \
    && python -m compileall -q /usr/local/lib/python3.11/site-packages/benchop \
        /usr/local/lib/python3.11/site-packages/benchagent
# Non-root (distroless "nonroot" uid). Nothing is written outside /tmp and mounted volumes,
# so the pods run with readOnlyRootFilesystem: true and an emptyDir on /tmp.
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["benchop"]
CMD ["--help"]
