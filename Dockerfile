# akidb for NVIDIA Jetson Thor (JetPack 7: L4T r38, Ubuntu 24.04, CUDA 13, TensorRT 10.13,
# GPU sm_110), with PostgreSQL 16.
#
#   docker build -t akidb-thor .                      # on the Thor itself (aarch64), hours
#   docker run --runtime nvidia -p 5432:5432 \
#       -v akidb-models:/var/lib/akidb/models -v akidb-data:/var/lib/postgresql/data akidb-thor
#
# Three stages: ONNX Runtime built from source with the CUDA and TensorRT execution
# providers (no aarch64 onnxruntime-gpu wheel exists), akidb built and installed by the
# same scripts `make test` runs (scripts/install.sh: cargo-pgrx, the release build, ONNX
# Runtime beside the extension, the default model), the core unit tests (the NEON
# distance kernels) run on the way; then a runtime image. README.md says what of this was
# run and what was not.
ARG BASE_IMAGE=nvcr.io/nvidia/l4t-jetpack:r38.2.1
ARG ORT_VERSION=1.31.1
ARG RUST_VERSION=1.95.0

# ---- ONNX Runtime with CUDA + TensorRT, for the Thor's GPU only (sm_110)
FROM ${BASE_IMAGE} AS onnxruntime
ARG ORT_VERSION
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential cmake git python3 python3-dev python3-pip python3-numpy ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN git clone --depth 1 --branch v${ORT_VERSION} --recursive https://github.com/microsoft/onnxruntime /src/onnxruntime
WORKDIR /src/onnxruntime
RUN ./build.sh --config Release --build_shared_lib --parallel --skip_tests --allow_running_as_root \
        --use_cuda --cuda_home /usr/local/cuda --cudnn_home /usr \
        --use_tensorrt --tensorrt_home /usr \
        --cmake_extra_defines CMAKE_CUDA_ARCHITECTURES=110 onnxruntime_BUILD_UNIT_TESTS=OFF \
    && mkdir -p /opt/onnxruntime \
    && cp build/Linux/Release/libonnxruntime.so.${ORT_VERSION} \
          build/Linux/Release/libonnxruntime_providers_shared.so \
          build/Linux/Release/libonnxruntime_providers_cuda.so \
          build/Linux/Release/libonnxruntime_providers_tensorrt.so /opt/onnxruntime/

# ---- akidb, built and installed by the repository's own scripts
FROM ${BASE_IMAGE} AS build
ARG RUST_VERSION
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        curl ca-certificates build-essential pkg-config git \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain ${RUST_VERSION}
ENV PATH=/root/.cargo/bin:$PATH \
    AKIDB_PG_APT=16 AKIDB_APT_EXTRA="" AKIDB_ONNXRUNTIME_DIR=/opt/onnxruntime
COPY --from=onnxruntime /opt/onnxruntime /opt/onnxruntime
COPY . /src/akidb
WORKDIR /src/akidb
# The NEON kernels and every other PostgreSQL-free test, on this aarch64 machine.
RUN cargo test --release -p akidb-core
# apt's PostgreSQL 16, cargo-pgrx, the release build, ONNX Runtime and the default model.
RUN PG_CONFIG=/usr/lib/postgresql/16/bin/pg_config bash scripts/install.sh

# ---- runtime
FROM ${BASE_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-16 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/lib/postgresql/16/lib/akidb.so /usr/lib/postgresql/16/lib/
COPY --from=build /usr/lib/postgresql/16/lib/akidb /usr/lib/postgresql/16/lib/akidb
COPY --from=build /usr/share/postgresql/16/extension/akidb* /usr/share/postgresql/16/extension/
COPY --from=build /usr/share/postgresql/16/akidb/models /opt/akidb/default-models
COPY scripts/thor-entrypoint.sh /usr/local/bin/akidb-entrypoint
# Models (the default one is copied in on the first start) and the TensorRT engine and
# timing caches live in volumes: an engine is built once per model and GPU, not per start.
ENV PGDATA=/var/lib/postgresql/data AKIDB_MODELS=/var/lib/akidb/models \
    AKIDB_TRT_CACHE=/var/lib/akidb/tensorrt-cache
RUN mkdir -p /var/lib/akidb/models /var/lib/akidb/tensorrt-cache /var/run/postgresql \
    && chown -R postgres: /var/lib/akidb /var/run/postgresql
VOLUME ["/var/lib/akidb/models", "/var/lib/akidb/tensorrt-cache", "/var/lib/postgresql/data"]
EXPOSE 5432
USER postgres
ENTRYPOINT ["/usr/local/bin/akidb-entrypoint"]
