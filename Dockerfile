# syntax=docker/dockerfile:1

# Converger container image: the one binary on Debian slim, run as a non-root
# user, with the embedded SQLite database under /data by default.
#
#   docker build -t converger .
#   docker run -p 4000:4000 -v converger-data:/data converger
#
# Migrations (sqlx::migrate!) and the admin templates and assets (askama,
# include_str!) are embedded at compile time: the runtime stage needs only the
# binary.

# ---- build ------------------------------------------------------------------
# At least Cargo.toml's rust-version (1.88); the version the project is tested with.
FROM rust:1.95.0-bookworm AS builder
WORKDIR /build

# Optional cargo features, e.g. --build-arg CARGO_FEATURES=otlp for OpenTelemetry
# trace export.
ARG CARGO_FEATURES=""

# Dependencies first, against empty targets: this layer is reused until
# Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --features "$CARGO_FEATURES" \
 && rm -rf src

# askama.toml tells askama where the templates are; migrations/ is read by
# sqlx::migrate! during compilation.
COPY askama.toml ./
COPY migrations ./migrations
COPY src ./src
# COPY keeps the files' original modification times, which can be older than the
# placeholder build above: touch the crate roots so cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --features "$CARGO_FEATURES" \
 && install -D -m 0755 target/release/converger /out/converger

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="Converger" \
      org.opencontainers.image.description="Multi-tenant message routing hub: channels in, activities stored, streamed and delivered out" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# ca-certificates: outbound HTTPS (webhooks, WhatsApp APIs, PostgreSQL over TLS)
# verifies against the system roots. sqlite3: online backups of /data
# (`sqlite3 /data/converger.db ".backup /data/backup.db"`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates sqlite3 \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 converger \
 && useradd --system --uid 10001 --gid converger --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin converger \
 && install -d -o converger -g converger -m 0750 /data

COPY --from=builder /out/converger /usr/local/bin/converger

# The SQLite database, its WAL files and the generated JWT secret
# (converger.db.jwt-secret) live here. PostgreSQL installations set
# CONVERGER_DATABASE_URL=postgres://... and need no volume.
ENV CONVERGER_DATABASE_URL=sqlite:///data/converger.db
VOLUME ["/data"]
WORKDIR /data

USER 10001:10001
EXPOSE 4000
ENTRYPOINT ["converger"]
CMD ["serve"]
