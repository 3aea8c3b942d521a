# syntax=docker/dockerfile:1
# One build, two small runtime images, with only what runs in production (the load generator
# and the demo, `coupon-tools`, are built without: --no-default-features):
#   docker build --target coupon-service  -t coupon-service:dev .
#   docker build --target coupon-operator -t coupon-operator:dev .
#
# Base images are pinned by digest (the tag beside it says which release it was): a rebuild
# fetches the bytes that were reviewed, never whatever a moving tag points at that day. To
# move to a newer base, resolve the tag (`docker buildx imagetools inspect rust:1.95-bookworm`)
# and replace both, in one reviewed change. (Checked by tests/python/test_supply_chain.py.)
FROM docker.io/library/rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p coupon-service --no-default-features --bin coupon-service \
    && cargo build --release --locked -p coupon-operator --bin coupon-operator \
    && install -m 0755 target/release/coupon-service target/release/coupon-operator /usr/local/bin/

# Distroless: glibc, libgcc, libssl3 (librdkafka's TLS and SCRAM; Redis and SQL use rustls,
# built in), CA certificates and tzdata, and nothing else: no shell, no package manager, so a
# compromised process finds no tools. Non-root (65532). zlib is linked into the binaries
# (rdkafka's `libz-static`), since the image has none; the test above checks that every
# library the binaries load is one the image has.
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f AS runtime
USER 65532:65532

FROM runtime AS coupon-service
COPY --from=build /usr/local/bin/coupon-service /usr/local/bin/coupon-service
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/coupon-service"]

FROM runtime AS coupon-operator
COPY --from=build /usr/local/bin/coupon-operator /usr/local/bin/coupon-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/coupon-operator"]
