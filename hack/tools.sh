#!/usr/bin/env bash
# Builds the testbed's tools at the versions pinned in hack/tools.env into a cache
# outside the checkout, one folder per tool and version, so that every clone and CI
# run on this machine reuses them.
#
#   hack/tools.sh            install what is missing (a second run does nothing)
#   hack/tools.sh dir        print the cache folder
#   hack/tools.sh clean      remove the cache
#
# INGRESS_ACME_TOOLS overrides the cache folder (default: $XDG_CACHE_HOME or
# ~/.cache, then ingress-acme/tools).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools.env
. "$here/tools.env"
CACHE=${INGRESS_ACME_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/ingress-acme/tools}

case ${1:-install} in
dir) echo "$CACHE"; exit 0 ;;
clean) rm -rf "$CACHE"; echo "removed $CACHE"; exit 0 ;;
install) ;;
*) echo "usage: $0 [install|dir|clean]" >&2; exit 2 ;;
esac

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 # one installer at a time; a second waits and then finds everything cached

export GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOTOOLCHAIN=local
LDFLAGS="-s -w"
log() { printf 'tools: %s\n' "$*" >&2; }

# gomod MODULE@VERSION: path of that module's go.mod in the module cache.
gomod() { go mod download -json "$1" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p'; }
# moddir MODULE@VERSION: path of that module's source in the module cache.
moddir() { go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p'; }

# directives GOMOD: the replace and exclude directives of a go.mod, one per line,
# as "replace OLD[@V]=NEW[@V]" and "exclude MOD@V" (block and single-line forms).
directives() {
	awk '
	function emit(kind, line,   parts, n, i, lhs, rhs, arrow) {
		sub(/\/\/.*/, "", line); n = split(line, parts, /[ \t]+/)
		if (n == 0) return
		if (kind == "exclude") { print "exclude " parts[1] "@" parts[2]; return }
		arrow = 0; for (i = 1; i <= n; i++) if (parts[i] == "=>") arrow = i
		lhs = parts[1]; if (arrow == 3) lhs = lhs "@" parts[2]
		rhs = parts[arrow + 1]; if (n > arrow + 1) rhs = rhs "@" parts[arrow + 2]
		print "replace " lhs "=" rhs
	}
	/^(replace|exclude)[ \t]*\($/ { block = $1; next }
	block != "" && /^\)/ { block = ""; next }
	block != "" { line = $0; gsub(/^[ \t]+|[ \t]+$/, "", line); if (line != "") emit(block, line); next }
	/^(replace|exclude)[ \t]/ { kind = $1; line = $0; sub(/^(replace|exclude)[ \t]+/, "", line); emit(kind, line) }
	' "$1"
}

# wrapper DIR MODULE@VERSION PKG...: a throwaway module that requires MODULE and
# imports PKG..., so that `go build` can build commands of modules whose own go.mod
# cannot be used from `go install` (relative replaces).
wrapper() {
	local dir=$1 mod=$2; shift 2
	rm -rf "$dir"; mkdir -p "$dir"
	{
		echo "module ingress-acme-tools/$(basename "$dir")"
		echo
		echo "go $(go env GOVERSION | sed 's/^go//')"
		echo
		echo "require ${mod%@*} ${mod#*@}"
	} >"$dir/go.mod"
	{
		echo '//go:build tools'
		echo
		echo 'package tools'
		echo
		for p in "$@"; do echo "import _ \"$p\""; done
	} >"$dir/tools.go"
}

# install NAME VERSION FUNC: run FUNC DEST unless NAME-VERSION is cached already.
install() {
	local name=$1 version=$2 fn=$3 dest="$CACHE/$1-$2"
	if [ -f "$dest/.complete" ]; then
		log "$name $version: cached in $dest"
		return
	fi
	log "$name $version: building into $dest"
	local t0=$SECONDS
	rm -rf "$dest.partial"; mkdir -p "$dest.partial"
	"$fn" "$dest.partial"
	touch "$dest.partial/.complete"
	rm -rf "$dest"; mv "$dest.partial" "$dest"
	log "$name $version: built in $((SECONDS - t0)) s"
	built=1
}

# PEBBLE_VERSION is the module's version, then "+" and the name of the patch in
# hack/pebble/ applied to it (see that patch for why).
build_pebble() {
	local m=github.com/letsencrypt/pebble/v2 v=${PEBBLE_VERSION%%+*} patch=${PEBBLE_VERSION#*+}
	local src; src=$(moddir "$m@v$v")
	local work="$CACHE/src/pebble"
	rm -rf "$work"; mkdir -p "$CACHE/src"; cp -r "$src" "$work"; chmod -R u+w "$work"
	if [ "$patch" != "$PEBBLE_VERSION" ]; then
		(cd "$work" && git apply -p1 "$here/pebble/$patch.patch") # git, not patch: a fresh Debian has git, maybe not patch
	fi
	(cd "$work" && GOBIN=$1 go install -trimpath -ldflags="$LDFLAGS" ./cmd/pebble ./cmd/pebble-challtestsrv)
	cp "$src/test/certs/pebble.minica.pem" "$src/test/certs/localhost/cert.pem" "$src/test/certs/localhost/key.pem" "$1/"
	chmod u+w "$1"/*.pem
}

build_etcd() {
	local w="$CACHE/src/etcd"
	wrapper "$w" "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" go.etcd.io/etcd/server/v3
	(cd "$w" && go mod tidy && go build -trimpath -ldflags="$LDFLAGS" -o "$1/etcd" go.etcd.io/etcd/server/v3)
}

build_kubernetes() {
	local w="$CACHE/src/kubernetes" m="k8s.io/kubernetes@v$KUBERNETES_VERSION"
	local staging="v0.${KUBERNETES_VERSION#*.}" # k8s.io/kubernetes v1.X.Y ships staging modules v0.X.Y
	wrapper "$w" "$m" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
	local up; up=$(gomod "$m")
	# Its go.mod points each staging module at ./staging/...: pin them to the published versions.
	directives "$up" | sed -n 's|^replace \(k8s.io/[^=@]*\)=\./staging/.*|\1|p' | while read -r s; do
		(cd "$w" && go mod edit -replace="$s=$s@$staging")
	done
	grep '^godebug ' "$up" >>"$w/go.mod" || true
	local v=k8s.io/component-base/version
	local ld="$LDFLAGS -X $v.gitVersion=v$KUBERNETES_VERSION -X $v.gitMajor=${KUBERNETES_VERSION%%.*} -X $v.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
	(cd "$w" && go mod tidy &&
		go build -trimpath -ldflags="$ld" -o "$1/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver &&
		go build -trimpath -ldflags="$ld" -o "$1/kubectl" k8s.io/kubernetes/cmd/kubectl)
}

build_traefik() {
	local w="$CACHE/src/traefik" m="github.com/traefik/traefik/v3@v$TRAEFIK_VERSION"
	wrapper "$w" "$m" github.com/traefik/traefik/v3/cmd/traefik
	local up; up=$(gomod "$m")
	# Its replaces (forks) and excludes only apply in its own module: copy them over.
	directives "$up" | while read -r kind arg; do
		case $arg in *=./* | *=../*) continue ;; esac
		(cd "$w" && go mod edit "-$kind=$arg")
	done
	(cd "$w" && go mod tidy && go build -trimpath -ldflags="$LDFLAGS" -o "$1/traefik" github.com/traefik/traefik/v3/cmd/traefik)
}

build_haproxy_ingress() {
	local w="$CACHE/src/haproxy-ingress" m=github.com/jcmoraisjr/haproxy-ingress
	# A wrapper module: the proxy refuses the module's version list, which
	# `go install MODULE@VERSION` asks for.
	wrapper "$w" "$m@v$HAPROXY_INGRESS_VERSION" "$m/pkg"
	(cd "$w" && go mod tidy && go build -trimpath -ldflags="$LDFLAGS" -o "$1/haproxy-ingress" "$m/pkg")
	# It reads its templates from ./rootfs and haproxy's Lua scripts from the
	# filesystem when it runs: keep a copy of the module's rootfs beside it.
	cp -R "$(moddir "$m@v$HAPROXY_INGRESS_VERSION")/rootfs" "$1/rootfs"
	chmod -R u+w "$1/rootfs"
}

build_skipper() {
	# skipper needs a newer Go than the project's: the go command fetches
	# SKIPPER_GOTOOLCHAIN from the module proxy and uses it for this build only.
	(
		export GOTOOLCHAIN=$SKIPPER_GOTOOLCHAIN
		local w="$CACHE/src/skipper" m=github.com/zalando/skipper
		wrapper "$w" "$m@v$SKIPPER_VERSION" "$m/cmd/skipper"
		cd "$w" && go mod tidy && go build -trimpath -ldflags="$LDFLAGS" -o "$1/skipper" "$m/cmd/skipper"
	)
}

# debian NAME CHECK VERSION PACKAGE...: unless the command CHECK succeeds,
# install the Debian packages; one that starts a daemon where an init system
# runs has it disabled again (the testbed starts its own). VERSION prints the
# installed version.
debian() {
	local name=$1 check=$2 version=$3; shift 3
	if eval "$check" >/dev/null 2>&1; then
		log "$name: $(eval "$version" 2>&1 | head -1)"
		return
	fi
	log "$name: installing Debian's $*"
	local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
	local p
	for p in "$@"; do $sudo systemctl disable --now "$p" >/dev/null 2>&1 || true; done
	built=1
}

built=0
install pebble "$PEBBLE_VERSION" build_pebble
install etcd "$ETCD_VERSION" build_etcd
install kubernetes "$KUBERNETES_VERSION" build_kubernetes
install traefik "$TRAEFIK_VERSION" build_traefik
install haproxy-ingress "$HAPROXY_INGRESS_VERSION" build_haproxy_ingress
install skipper "$SKIPPER_VERSION" build_skipper
debian "prometheus, promtool" "command -v promtool && command -v prometheus" "promtool --version" prometheus
# haproxy-ingress runs haproxy, whose Lua scripts need lua-json.
debian "haproxy, lua-json" "command -v haproxy && dpkg-query -W -f='\${Status}' lua-json | grep -q 'ok installed'" "haproxy -v" haproxy lua-json
# The image test builds the image with buildah and runs it with podman on runc
# (crun, podman's default, refuses cgroups in hybrid mode).
debian "podman, buildah, runc" "command -v podman && command -v buildah && command -v runc" "podman --version" podman buildah runc
rm -rf "$CACHE/src"
[ "$built" = 1 ] || log "all tools cached, nothing to do"
