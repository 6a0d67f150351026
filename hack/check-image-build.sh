#!/usr/bin/env bash
# Runs the Dockerfile's own build command (no container engine needed) and checks
# that it yields the same binary as `make build`, static and stamped with its version.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=$(sed -n 's/^RUN \(CGO_ENABLED=0 go build .*\)$/\1/p' Dockerfile)
[ -n "$cmd" ] || { echo "check-image-build: no 'RUN CGO_ENABLED=0 go build' line in Dockerfile" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
VERSION=check-image-build
(export VERSION; eval "${cmd//\/out\//$out/}")
make --no-print-directory build VERSION=$VERSION BIN="$out/make-build" >/dev/null
if ! cmp -s "$out/ingress-acme" "$out/make-build"; then
	echo "check-image-build: the Dockerfile's build and 'make build' differ" >&2; exit 1
fi
if ldd "$out/ingress-acme" >/dev/null 2>&1; then
	echo "check-image-build: the binary is dynamically linked" >&2; exit 1
fi
got=$("$out/ingress-acme" --version)
[ "$got" = "$VERSION" ] || { echo "check-image-build: --version printed '$got', want '$VERSION'" >&2; exit 1; }
echo "check-image-build: Dockerfile build == make build, static, version $got"
