#!/usr/bin/env bash
# Assembles the image's file system with the Dockerfile's own script (no
# container engine needed) and checks that its binary is the one `make build`
# makes, static and stamped with its version, beside nothing but the CA
# certificates and the passwd/group of user 65532.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx 'RUN VERSION=${VERSION} hack/image-rootfs.sh /out/rootfs' Dockerfile ||
	{ echo "check-image-build: the Dockerfile does not build with hack/image-rootfs.sh" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
VERSION=check-image-build
VERSION=$VERSION hack/image-rootfs.sh "$out/rootfs"
make --no-print-directory build VERSION=$VERSION BIN="$out/make-build" >/dev/null
if ! cmp -s "$out/rootfs/ingress-acme" "$out/make-build"; then
	echo "check-image-build: the image's binary and 'make build' differ" >&2; exit 1
fi
if ldd "$out/rootfs/ingress-acme" >/dev/null 2>&1; then
	echo "check-image-build: the binary is dynamically linked" >&2; exit 1
fi
got=$("$out/rootfs/ingress-acme" --version)
[ "$got" = "$VERSION" ] || { echo "check-image-build: --version printed '$got', want '$VERSION'" >&2; exit 1; }
files=$(cd "$out/rootfs" && find . -type f | sort | tr '\n' ' ')
want='./etc/group ./etc/passwd ./etc/ssl/certs/ca-certificates.crt ./ingress-acme '
[ "$files" = "$want" ] || { echo "check-image-build: the image holds '$files', want '$want'" >&2; exit 1; }
echo "check-image-build: image binary == make build, static, version $got; files: $files"
