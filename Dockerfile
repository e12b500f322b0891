# syntax=docker/dockerfile:1
# The four FiberStack images, for users with Docker (or BuildKit, kaniko, buildah bud):
#
#   docker build --target fiber-probe -t registry.example.com/fiberstack/fiber-probe:0.1.0 .
#   (likewise fiberstack-operator, fiber-ingest, fiber-etl)
#
# The same layout as `make images` (images/build.sh, buildah, no daemon): both lay out each
# image's files with images/rootfs.sh and set the same configuration below — entrypoint,
# user 65532, PATH, labels. Keep the two in step (e2e/tests/images.rs compares them).
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
      -p fiberstack-operator -p fiber-probe -p fiber-ingest -p fiber-etl \
 && for name in fiberstack-operator fiber-probe fiber-ingest fiber-etl; do \
      bash images/rootfs.sh "target/release/$name" "/rootfs/$name"; \
    done

FROM scratch AS fiberstack-operator
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=build /rootfs/fiberstack-operator/ /
USER 65532:65532
ENV PATH=/usr/local/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title=fiberstack-operator \
      org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.source=https://github.com/fiberstack/fiberstack \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.licenses=Apache-2.0
ENTRYPOINT ["/usr/local/bin/fiberstack-operator"]

FROM scratch AS fiber-probe
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=build /rootfs/fiber-probe/ /
USER 65532:65532
ENV PATH=/usr/local/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title=fiber-probe \
      org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.source=https://github.com/fiberstack/fiberstack \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.licenses=Apache-2.0
ENTRYPOINT ["/usr/local/bin/fiber-probe"]

FROM scratch AS fiber-ingest
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=build /rootfs/fiber-ingest/ /
USER 65532:65532
ENV PATH=/usr/local/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title=fiber-ingest \
      org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.source=https://github.com/fiberstack/fiberstack \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.licenses=Apache-2.0
ENTRYPOINT ["/usr/local/bin/fiber-ingest"]

FROM scratch AS fiber-etl
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=build /rootfs/fiber-etl/ /
USER 65532:65532
ENV PATH=/usr/local/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title=fiber-etl \
      org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.source=https://github.com/fiberstack/fiberstack \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.licenses=Apache-2.0
ENTRYPOINT ["/usr/local/bin/fiber-etl"]
