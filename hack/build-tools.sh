#!/usr/bin/env bash
# Builds the third-party binaries that stickynet's tests and local cluster run,
# from the Go modules pinned under hack/<tool>/go.mod, into a cache folder
# outside the clone keyed by version (default ~/.cache/stickynet), so a fresh
# clone or CI run reuses them. Usage: hack/build-tools.sh TOOL...
# Prints "<tool>=<folder>" for each tool built or found.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${STICKYNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stickynet}"

# build NAME MODULE_DIR VERSION LDFLAGS TAGS BIN=PKG...
build() {
  local name=$1 dir=$2 version=$3 ldflags=$4 tags=$5
  shift 5
  local out="$cache/$name-$version" missing=0 spec
  for spec in "$@"; do [ -x "$out/${spec%%=*}" ] || missing=1; done
  if [ "$missing" = 1 ]; then
    echo "building $name $version into $out" >&2
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    for spec in "$@"; do
      (cd "$here/$dir" && CGO_ENABLED=${CGO:-0} go build -trimpath -tags "$tags" -ldflags "-s -w $ldflags" \
        -o "$out.tmp/${spec%%=*}" "${spec#*=}")
    done
    rm -rf "$out" && mv "$out.tmp" "$out"
  fi
  echo "$name=$out"
}

# version TOOL prints the tool's version from hack/tool-versions.
version() {
  local v
  v=$(awk -v t="$1" '$1 == t { print $2 }' "$here/tool-versions")
  [ -n "$v" ] || { echo "no version of $1 in $here/tool-versions" >&2; exit 2; }
  echo "$v"
}

kube_ldflags() {
  local v=$1 minor=$2 p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.gitVersion=%s -X %s.gitMajor=1 -X %s.gitMinor=%s -X %s.gitTreeState=clean ' "$p" "$v" "$p" "$p" "$minor" "$p"
  done
}

for tool in "$@"; do
  case "$tool" in
  kube)
    v=$(version kube)
    minor=${v#v1.}
    build kube kube "$v" "$(kube_ldflags "$v" "${minor%%.*}")" "" \
      kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
      kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
      kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
      kubelet=k8s.io/kubernetes/cmd/kubelet \
      kubectl=k8s.io/kubernetes/cmd/kubectl
    ;;
  etcd)
    build etcd etcd "$(version etcd)" "" "" etcd=go.etcd.io/etcd/server/v3 etcdctl=go.etcd.io/etcd/etcdctl/v3
    ;;
  containerd)
    v=$(version containerd)
    build containerd containerd "$v" "-X github.com/containerd/containerd/v2/version.Version=${v#v}" no_btrfs \
      containerd=github.com/containerd/containerd/v2/cmd/containerd \
      containerd-shim-runc-v2=github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
      ctr=github.com/containerd/containerd/v2/cmd/ctr
    ;;
  cniplugins)
    build cniplugins cniplugins "$(version cniplugins)" "" "" \
      bridge=github.com/containernetworking/plugins/plugins/main/bridge \
      host-local=github.com/containernetworking/plugins/plugins/ipam/host-local \
      loopback=github.com/containernetworking/plugins/plugins/main/loopback \
      bandwidth=github.com/containernetworking/plugins/plugins/meta/bandwidth
    ;;
  helm)
    v=$(version helm)
    build helm helm "$v" "-X helm.sh/helm/v3/internal/version.version=$v" "" helm=helm.sh/helm/v3/cmd/helm
    ;;
  images)
    # Programs baked into the local cluster's images (e2e/images assembles them).
    # Bump its version (hack/tool-versions) when hack/images changes: the
    # cache is keyed by it.
    build images images "$(version images)" "" "" pause=./pause
    ;;
  *)
    echo "unknown tool $tool" >&2
    exit 2
    ;;
  esac
done
