# The operator image for registries. It has the layout tools/images.sh assembles without Docker for the local
# node (the image the in-cluster tests run): Debian 12's libc and libgcc, Mozilla's CA set, the user nonroot
# (65532) and the binary at /usr/local/bin/agentiam as the entrypoint; the chart's args start with `run`.
#
#   docker build -t ghcr.io/agentiam/agentiam:<version> .
#
# Nothing on our machines runs Docker, so this file is not built in CI; tools/images.sh is, on every
# `make test` with a node. `make lint` checks that the two stay in step (tools/images.sh check-dockerfile:
# entrypoint, user, where the binary goes, the Debian release, a Rust no older than rust-version).

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin agentiam

# distroless/cc: libc6, libgcc-s1, ca-certificates, /etc/passwd with nonroot, a world-writable /tmp.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/agentiam /usr/local/bin/agentiam
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/agentiam"]
