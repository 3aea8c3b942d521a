# syntax=docker/dockerfile:1
# One build, two small runtime images:
#   docker build --target coupon-service  -t coupon-service:dev .
#   docker build --target coupon-operator -t coupon-operator:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p coupon-service -p coupon-operator --bins \
    && install -m 0755 target/release/coupon-service target/release/coupon-operator /usr/local/bin/

# No compilers, no package manager cache, no shell needed at run time; non-root (65532).
# libssl3: librdkafka's TLS and SCRAM (Redis and SQL use rustls, built in); ca-certificates:
# the system roots for managed services with public certificates.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/*
USER 65532:65532

FROM runtime AS coupon-service
COPY --from=build /usr/local/bin/coupon-service /usr/local/bin/coupon-service
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/coupon-service"]

FROM runtime AS coupon-operator
COPY --from=build /usr/local/bin/coupon-operator /usr/local/bin/coupon-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/coupon-operator"]
