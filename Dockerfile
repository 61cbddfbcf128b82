# syntax=docker/dockerfile:1
# The project's images for people who build with Docker. One target per
# program:
#
#   docker build --target webserver -t purchase-system/webserver:dev .
#   docker build --target consumer  -t purchase-system/consumer:dev .
#   docker build --target adapter   -t purchase-system/adapter:dev .
#
# The files come from the same build script as make images
# (scripts/images.sh rootfs: a static binary, CA certificates, passwd and
# group with the non-root user 65532), so the images are equivalent. make
# images is the path tested on the project's machines, which have no
# Docker engine.
FROM golang:1.26-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools file ca-certificates git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN for p in webserver consumer adapter; do scripts/images.sh rootfs "$p" "/rootfs/$p"; done

FROM scratch AS base
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.source="https://github.com/purchase-system/purchase-system" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}"
ENV PATH=/usr/local/bin:/usr/bin:/bin
USER 65532:65532
WORKDIR /

FROM base AS webserver
COPY --from=build /rootfs/webserver/ /
EXPOSE 8080/tcp
ENTRYPOINT ["/usr/local/bin/webserver"]

FROM base AS consumer
COPY --from=build /rootfs/consumer/ /
EXPOSE 8081/tcp
ENTRYPOINT ["/usr/local/bin/consumer"]

FROM base AS adapter
COPY --from=build /rootfs/adapter/ /
EXPOSE 6443/tcp
ENTRYPOINT ["/usr/local/bin/adapter"]
