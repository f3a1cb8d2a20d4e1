# orders-service in a container: built with the release build CI runs (ci/build-release.sh), run on a
# slim Debian as an unprivileged user, health-checked through grpc.health.v1.
#
#   docker build -t orders-service .
#   docker compose up --wait        # the service with PostgreSQL, Redis and Kafka (docker-compose.yml)
#
# Settings come from the environment, as for the binary (`orders-service --help`): DATABASE_URL,
# REDIS_URL, KAFKA_BROKERS, GRPC_ADDR (0.0.0.0:50051 here), METRICS_ADDR, ...

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The compilers and zlib that librdkafka's build needs are in the image; protoc is a crate
# (protoc-bin-vendored). Only what the build reads is copied (.dockerignore keeps target/ out).
COPY . .
RUN bash ci/build-release.sh

FROM debian:bookworm-slim
# zlib is librdkafka's one shared library beyond libc, and is part of every Debian image.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin orders
COPY --from=build /src/target/release/orders-service /usr/local/bin/orders-service
USER orders
ENV GRPC_ADDR=0.0.0.0:50051 \
    RUST_LOG=info
EXPOSE 50051
# Healthy while the service can serve orders (PostgreSQL answers); `--service ""` would also require
# Redis and Kafka, which the service does without for a while (reads from PostgreSQL, events queued in
# the outbox).
HEALTHCHECK --interval=5s --timeout=4s --start-period=20s --retries=3 \
    CMD ["orders-service", "health-check"]
ENTRYPOINT ["orders-service"]
CMD ["run"]
