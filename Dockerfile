# syntax=docker/dockerfile:1
#
# celgate's container image: built with the pinned Rust toolchain, run on a
# distroless base (glibc and libgcc only: no shell, no package manager) as
# the unprivileged user 65532.
#
#   docker build -t celgate:0.1.0 .                      # profile-guided (PGO) build
#   docker build --build-arg PGO=0 -t celgate:0.1.0 .    # plain release build, about half the time
#   docker run --rm -p 9191:9191 -p 9192:9192 celgate:0.1.0              # the bundled policies/
#   docker run --rm -v "$PWD/my-policies:/policies:ro" -p 9191:9191 celgate:0.1.0 serve --policies /policies
#
# Health: `celgate healthcheck` (GET /readyz, no shell needed) backs the
# HEALTHCHECK below. It finds the server through CELGATE_HTTP_ADDR: change
# the HTTP address with that variable, not with `serve --http-addr`.
# Kubernetes probes use /livez and /readyz on port 9192 (deploy/kubernetes).

FROM rust:1.95-bookworm AS build
# PGO=1 (the default): a profile-guided build, scripts/pgo-build.sh (an
# instrumented build trained on the repository's test suites and bundled
# policies, then the release build made again with the profile): about twice
# the build time, and the throughput BENCHMARKS.md records. PGO=0: a plain
# `cargo build --release`.
ARG PGO=1
# llvm-profdata must match the LLVM of the image's rustc (1.95: LLVM 22);
# h2load and python3 drive the training servers on the build's loopback.
RUN if [ "$PGO" = 1 ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends llvm-22 nghttp2-client python3 curl \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build outputs between builds; the binary
# is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ "$PGO" = 1 ]; then \
      scripts/pgo-build.sh \
      && install -D -m 0755 target/pgo/use/release/celgate /out/celgate; \
    else \
      cargo build --release --locked --bin celgate \
      && install -D -m 0755 target/release/celgate /out/celgate; \
    fi

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/celgate /usr/local/bin/celgate
COPY policies/*.yaml /etc/celgate/policies/
# Listen on every interface inside the container (the binary's defaults are
# loopback, which nothing outside the container reaches); logs as JSON lines.
ENV CELGATE_POLICIES=/etc/celgate/policies \
    CELGATE_GRPC_ADDR=0.0.0.0:9191 \
    CELGATE_HTTP_ADDR=0.0.0.0:9192 \
    CELGATE_LOG_FORMAT=json
USER 65532:65532
# 9191: envoy.service.auth.v3.Authorization (gRPC), grpc.health.v1, reflection
# 9192: /livez, /readyz, /metrics, /policies
EXPOSE 9191 9192
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/celgate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/celgate"]
CMD ["serve"]
