# syntax=docker/dockerfile:1

# Build stage. The Rust version matches rust-version in Cargo.toml.
FROM rust:1.88.0-slim-bookworm AS build

# rdkafka builds the bundled librdkafka and, for its ssl-vendored feature, OpenSSL from source.
# Both need make. OpenSSL's Configure also needs Perl core modules (IPC::Cmd) that Debian ships
# in perl, not in perl-base. The versions are left to bookworm, whose security updates replace
# older ones in the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make perl \
    && rm -rf /var/lib/apt/lists/*

# distroless/cc-debian12 has no libz.so, so zlib is compiled in (libz-sys reads this variable).
ENV LIBZ_SYS_STATIC=1

WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src

# The cache mounts keep the crate registry and the compiled dependencies between builds, so a
# change under src/ recompiles only this crate. The binary is copied out of the cached target
# directory, which is not part of the image.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin webhook-bridge \
    && install -m 0755 target/release/webhook-bridge /usr/local/bin/webhook-bridge

# Stop here if the binary needs a shared library that the runtime image lacks. The runtime
# image has glibc, libgcc_s, libstdc++, libgomp and OpenSSL 3.
RUN readelf -d /usr/local/bin/webhook-bridge \
    | awk '/NEEDED/ { library = $5; gsub(/[][]/, "", library); \
        if (library !~ /^(libc|libm|libgcc_s|libstdc\+\+|libgomp|libpthread|libdl|librt|libssl|libcrypto|ld-linux-x86-64|ld-linux-aarch64)\.so/) { \
            print "the runtime image lacks " library > "/dev/stderr"; missing = 1 } } \
        END { exit missing }'

# Runtime stage: glibc and CA certificates, no shell and no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=build /usr/local/bin/webhook-bridge /usr/local/bin/webhook-bridge

# Settings come from WEBHOOK_BRIDGE__* variables; a TOML file can be mounted and passed with
# --config. Listening on all interfaces is the one setting a container always needs. Variables
# take precedence over the file, so change the port with this variable, not in the file.
ENV WEBHOOK_BRIDGE__SERVER__LISTEN=0.0.0.0:8080
EXPOSE 8080

# 65532 is the nonroot user of the distroless images. A numeric user lets Kubernetes check
# runAsNonRoot without a runAsUser.
USER 65532:65532

# `healthcheck` requests /healthz on the port of server.listen and exits 0 on 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/webhook-bridge", "healthcheck"]

# Exec form, so the bridge is PID 1 and receives SIGTERM. It may take
# server.shutdown_timeout_secs (30 s) plus 5 s to close the broker connection, more than
# Docker's default 10 s stop timeout: run it with --stop-timeout 40 or more.
ENTRYPOINT ["/usr/local/bin/webhook-bridge"]
