# syntax=docker/dockerfile:1

# ---- builder ---------------------------------------------------------------
FROM rust:1-bookworm AS builder

# cmake/build-essential/python3: rdkafka builds its bundled librdkafka from source.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake pkg-config libssl-dev zlib1g-dev build-essential python3 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The whole workspace (every member is needed to resolve it; .dockerignore
# leaves out target/ and local data). sqlx::migrate! embeds migrations/ and
# query-api embeds its static/ dashboard at compile time.
COPY . .

# The target dir is a cache mount (gone after this RUN), so copy the binaries out here.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/app/target \
    cargo build --release --locked -p ingest-gateway -p ingest-worker -p query-api --bins \
 && mkdir -p /out \
 && cp target/release/ingest-gateway target/release/ingest-worker target/release/query-api /out/

# ---- runtime ---------------------------------------------------------------
FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="energy-ingestion-engine" \
      org.opencontainers.image.description="Energy Ingestion Engine: ingest-gateway, ingest-worker and query-api" \
      org.opencontainers.image.licenses="Apache-2.0"

# libssl3: librdkafka's TLS and SASL/SCRAM. curl is only for container healthchecks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/*

# A fixed non-root uid, so orchestrators can enforce runAsNonRoot.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin energy

COPY --from=builder /out/ingest-gateway /out/ingest-worker /out/query-api /usr/local/bin/

USER 10001:10001

# One image, three services: the orchestrator (docker-compose.yml) picks the command.
ENTRYPOINT []
CMD ["ingest-worker", "--help"]
