#!/usr/bin/env bash
# image-rootfs.sh OUT: assembles in OUT everything the container image holds,
# and nothing else: the static binary, the CA certificates it trusts, and the
# passwd/group entries of its non-root user 65532. The Dockerfile runs it in
# its build stage and copies OUT into an empty (scratch) image; hack/image.sh
# runs it on the host and copies OUT with the Dockerfile's own final stage, so
# the image built here and the one users build cannot drift.
# VERSION is stamped into the binary (dev if unset).
set -euo pipefail
out=${1:?usage: image-rootfs.sh OUT}
cd "$(dirname "$0")/.."
ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] || { echo "image-rootfs: $ca is missing (Debian's ca-certificates package)" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/etc/ssl/certs"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION:-dev}" -o "$out/ingress-acme" .
cp "$ca" "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/etc/group"
chmod 0755 "$out/ingress-acme"
chmod 0644 "$out/etc/passwd" "$out/etc/group" "$out/etc/ssl/certs/ca-certificates.crt"
