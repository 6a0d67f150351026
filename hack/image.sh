#!/usr/bin/env bash
# image.sh TAG: builds the container image TAG. With a working docker, the
# Dockerfile as it is. Otherwise with buildah, offline: hack/image-rootfs.sh on
# the host, then the Dockerfile's own final stage (from "FROM scratch" on) with
# its one COPY --from=build reading that file system instead. BUILDAH_OPTS
# (e.g. --root DIR --runroot DIR --storage-driver vfs) choose buildah's storage.
# VERSION is stamped into the binary.
set -euo pipefail
tag=${1:?usage: image.sh TAG}
cd "$(dirname "$0")/.."
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
	exec docker build --build-arg VERSION="${VERSION:-dev}" -t "$tag" .
fi
command -v buildah >/dev/null || { echo "image: neither docker nor buildah here (make tools installs buildah)" >&2; exit 1; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
hack/image-rootfs.sh "$ctx/rootfs"
sed -n '/^FROM scratch$/,$p' Dockerfile >"$ctx/Containerfile"
from='COPY --from=build /out/rootfs/ /'
[ "$(grep -cxF "$from" "$ctx/Containerfile")" = 1 ] || { echo "image: the Dockerfile's final stage has no line '$from'" >&2; exit 1; }
sed -i "s#^COPY --from=build /out/rootfs/ /\$#COPY rootfs/ /#" "$ctx/Containerfile"
# shellcheck disable=SC2086 # BUILDAH_OPTS is a list of options
buildah ${BUILDAH_OPTS:-} bud --quiet --pull=never --layers=false -f "$ctx/Containerfile" -t "$tag" "$ctx"
