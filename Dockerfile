# syntax=docker/dockerfile:1
#
# Portcullis container image: one binary on a distroless base, running as UID 65532.
#
#   docker build -t portcullis:dev .
#   docker run --rm -p 50051:50051 -p 9090:9090 \
#     -v "$PWD/my-config:/etc/portcullis/config:ro" portcullis:dev
#
# (my-config/config.yaml must listen on 0.0.0.0, not 127.0.0.1, to be reachable.)
#
# The binary is stripped (about 22 MB; its symbols stay in the builder stage at
# /out-debug/portcullis.debug). The test command builds and runs the same layout from the
# local binary without any registry: images/local.Containerfile, tests/image/.

# Base images are pinned by digest (a rebuild gets the bytes that were reviewed;
# .github/dependabot.yml proposes updates) and are build arguments so that a mirror can be
# used, pinned by digest there too:
#   --build-arg RUST_IMAGE=mirror.example/library/rust:1-bookworm@sha256:...
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm@sha256:93ce27a88655056a51dbdd8f5f2d7ddc071c7b0070fb288a37b5a285fc83971e
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

############################################################################
# Build: release binary from the locked dependency graph.
FROM ${RUST_IMAGE} AS builder
WORKDIR /src

# build.rs compiles proto/ with protox (pure Rust): no protoc needed. aws-lc-sys builds
# its C sources with the toolchain's cc.
COPY . .

# Cache mounts keep the registry and target/ between builds (BuildKit); the binary is
# copied out in the same step because the target cache is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin portcullis \
 && mkdir -p /out-debug \
 && objcopy --only-keep-debug target/release/portcullis /out-debug/portcullis.debug \
 && install -D -m 0755 target/release/portcullis /out/portcullis \
 && strip --strip-all /out/portcullis

############################################################################
# Runtime: glibc, libgcc, CA certificates and tzdata; no shell, no package manager.
FROM ${RUNTIME_IMAGE}

LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="gRPC token-validation service (JWT, OAuth2 introspection, API keys, Basic, client certificates; Envoy ext_authz)" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/portcullis /usr/local/bin/portcullis

# 65532 is distroless' "nonroot" user; the Helm chart runs with the same UID.
USER 65532:65532

# gRPC (portcullis.v1.Auth, Envoy ext_authz, grpc.health.v1, reflection) and admin HTTP
# (/metrics, /healthz, /readyz).
EXPOSE 50051 9090

ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/config/config.yaml"]
