# Multi-stage build: a static binary in an empty image, run as a non-root user.
# The build stage assembles the image's whole file system with
# hack/image-rootfs.sh, which hack/image.sh also runs to build this same final
# stage without a container engine that pulls (make image, the e2e tests).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN VERSION=${VERSION} hack/image-rootfs.sh /out/rootfs

FROM scratch
COPY --from=build /out/rootfs/ /
USER 65532:65532
EXPOSE 8089 9402
ENTRYPOINT ["/ingress-acme"]
