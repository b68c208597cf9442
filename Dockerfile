# syntax=docker/dockerfile:1
# CloudKon images. Build one target at a time:
#   docker build --target worker -t cloudkon-worker:0.1.0 .      # cloudkon-worker + ffmpeg (Animoto): the image a pool runs by default
#   docker build --target cli    -t cloudkon .           # the cloudkon command
#   docker build --target operator -t cloudkon/operator:0.1.0 .  # cloudkon-operator (the Helm chart's image)
# (Not built in this project's CI: its machines have no Docker engine.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cloudkon-cli -p cloudkon-worker -p cloudkon-operator \
    && install -D target/release/cloudkon target/release/cloudkon-worker \
       target/release/cloudkon-operator -t /out/

# The worker runs `run` tasks (the user's programs) and Animoto (ffmpeg): a full
# Debian userland, not distroless, so that tasks find a shell and common tools.
FROM debian:bookworm-slim AS worker
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home cloudkon
COPY --from=build /out/cloudkon-worker /usr/local/bin/
USER 10001
# `run` tasks start here: on pods the root is read-only and /tmp the one
# writable place, so a task writing a relative path works as under
# `cloudkon run`.
WORKDIR /tmp
ENV CLOUDKON_LOG_FORMAT=json CLOUDKON_METRICS_ADDR=0.0.0.0:9090
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/cloudkon-worker"]

FROM debian:bookworm-slim AS cli
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home cloudkon
COPY --from=build /out/cloudkon /usr/local/bin/
USER 10001
ENTRYPOINT ["/usr/local/bin/cloudkon"]

# The operator talks only to the API server and AWS over TLS: a small image
# with CA certificates, non-root (the chart also sets a read-only root
# filesystem).
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/cloudkon-operator /usr/local/bin/
USER 10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/cloudkon-operator"]
CMD ["run"]
