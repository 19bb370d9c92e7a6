# guardian: SQLite backup and integrity guardian, as a service.
#
#   docker build -t guardian .
#   docker run -d --name guardian \
#     -v /srv/app/data:/data -v guardian-backups:/var/backups/guardian \
#     -v /srv/guardian/guardian.toml:/etc/guardian/guardian.toml:ro \
#     -p 127.0.0.1:9187:9187 guardian
#
# The config must set `[service] listen = "0.0.0.0:9187"` for the published port to reach the
# listener (the HEALTHCHECK runs inside the container and works either way). One-shot commands
# run the same image:
#   docker exec guardian guardian status
#   docker run --rm ... guardian restore --latest --db market

# ---- build ----------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# SQLite (rusqlite "bundled") and aws-lc (TLS) are compiled from C with the image's gcc.
COPY Cargo.toml Cargo.lock ./
# The bundled SQLite's compile options (sqlite_dbpage, which incremental snapshots read).
COPY .cargo ./.cargo
COPY src ./src
# Cargo reads every target the manifest declares, the test binary included.
COPY tests ./tests
RUN cargo build --release --locked --bin guardian \
 && strip target/release/guardian

# ---- run ------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: TLS to S3 and webhooks. sqlite3: for a human inspecting a restored file.
# curl: the HEALTHCHECK.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates sqlite3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 guardian \
 && useradd --system --uid 10001 --gid guardian --home-dir /var/lib/guardian --shell /usr/sbin/nologin guardian \
 && mkdir -p /etc/guardian /var/backups/guardian /var/tmp/guardian \
 && chown guardian:guardian /var/backups/guardian /var/tmp/guardian
COPY --from=build /src/target/release/guardian /usr/local/bin/guardian
COPY config/guardian.example.toml /etc/guardian/guardian.example.toml

USER 10001:10001
ENV GUARDIAN_CONFIG=/etc/guardian/guardian.toml \
    TMPDIR=/var/tmp/guardian
VOLUME ["/var/backups/guardian"]
EXPOSE 9187
# Liveness of the service loop. Data health (stale backups, failed drills) is alerted on from
# /metrics or `guardian status`, not by restarting the container.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9187/healthz"]
# SIGTERM (docker stop) lets the job in flight finish within service.shutdown_timeout (8 s by
# default, under Docker's 10 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["guardian"]
CMD ["run"]
