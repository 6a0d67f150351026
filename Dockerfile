# Multi-stage build: a static binary on a distroless, non-root base.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# hack/check-image-build.sh runs this exact command in `make test`.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ingress-acme .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ingress-acme /ingress-acme
USER 65532:65532
EXPOSE 8089 9402
ENTRYPOINT ["/ingress-acme"]
