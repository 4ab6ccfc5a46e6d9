#!/usr/bin/env bash
# `make demo`: brings the local cluster up with stickynet (make cluster-up
# STICKYNET=1), runs the session of README.md's "Try it" for real,
# printing each command and its output, and tears the cluster down at the end.
# KEEP=1 leaves it running (stop it with `make cluster-down`).
set -euo pipefail
cd "$(dirname "$0")/../.."

cache=${STICKYNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stickynet}
kube=$cache/kube-$(awk '$1 == "kube" { print $2 }' hack/tool-versions)
if [[ ! -x $kube/kubectl ]]; then
  echo "demo: kubectl not found in $kube: run make tools first" >&2
  exit 1
fi
export PATH=$kube:$PATH KUBECONFIG=$PWD/_output/kubeconfig

# say prints a step; run prints a command as typed, then runs it.
say() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
run() {
  local out='$' a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=" $a"; else out+=" '$a'"; fi
  done
  printf '%s\n' "$out"
  "$@"
}
# apply prints and applies a manifest given on stdin.
apply() {
  local m
  m=$(cat)
  printf '$ kubectl apply -f - <<EOF\n%s\nEOF\n' "$m"
  kubectl apply -f - <<<"$m"
}

if [[ ${KEEP:-} != 1 ]]; then
  trap 'say "Tearing the cluster down (KEEP=1 leaves it up)"; make -s cluster-down' EXIT
fi
say "Starting the local cluster with stickynet: 3 real nodes (kubelet, containerd, Open vSwitch each)"
make -s cluster-up STICKYNET=1 NODES=3 SIM_NODES=0

# The pods share the nodes' fabric subnet (10.2xx.0.0/16, chosen free at
# start); its bridge in the host namespace is the pods' gateway.
node_ip=$(kubectl get node node-1 -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
net=${node_ip%.*.*}

say "An IPPool on the nodes that run stickynet's agent; the default pool of the namespaces it admits"
apply <<EOF
apiVersion: stickynet.io/v1alpha1
kind: IPPool
metadata:
  name: demo
spec:
  cidr: $net.0.0/16
  gateway: $net.0.1
  ranges: [{start: $net.6.1, end: $net.7.254}]
  nodeSelector: {matchLabels: {e2e.stickynet.io/stickynet: "true"}}
  default: true
EOF

say "A namespace whose pods get sticky addresses (after the pool: a pod of an opted-in namespace that no pool serves is refused)"
run kubectl create namespace demo
run kubectl label namespace demo stickynet.io/enabled=true

say "A StatefulSet of three pods (busybox and an iperf3 server)"
apply <<'EOF'
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
  namespace: demo
spec:
  replicas: 3
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: stickynet.local/toolbox:v1
        imagePullPolicy: Never
        command: [sh, -c, "iperf3 -s & trap 'exit 0' TERM; while true; do sleep 1; done"]
EOF
run kubectl -n demo rollout status statefulset/web --timeout=120s

columns='NAME:.metadata.name,NODE:.spec.nodeName,IP:.status.podIP,MAC:.metadata.annotations.stickynet\.io/assigned-mac,SCHEDULER:.spec.schedulerName'
say "Each pod's sticky IP and MAC (the webhook's annotations; the extender's scheduler placed them)"
run kubectl -n demo get pods -o custom-columns="$columns"
say "They are on the pod's interface"
run kubectl -n demo exec web-1 -- ip addr show eth0

node=$(kubectl -n demo get pod web-1 -o jsonpath='{.spec.nodeName}')
ip=$(kubectl -n demo get pod web-1 -o jsonpath='{.status.podIP}')
say "web-1 runs on $node: cordon it, delete the pod; the StatefulSet recreates it elsewhere"
run kubectl cordon "$node"
run kubectl -n demo delete pod web-1
until kubectl -n demo get pod web-1 >/dev/null 2>&1; do sleep 0.5; done
run kubectl -n demo wait --for=condition=Ready pod/web-1 --timeout=120s
run kubectl -n demo get pods -o custom-columns="$columns"
run kubectl -n demo exec web-1 -- ip addr show eth0
say "web-0 reaches web-1 at its old address on its new node"
run kubectl -n demo exec web-0 -- ping -c 3 "$ip"
run kubectl uncordon "$node"

say "Limit web-1 to 100 Mbit/s each way; the node agent applies it to the running pod"
apply <<'EOF'
apiVersion: stickynet.io/v1alpha1
kind: BandwidthPolicy
metadata:
  name: web-1
  namespace: demo
spec:
  podSelector: {matchLabels: {statefulset.kubernetes.io/pod-name: web-1}}
  ingress: {rate: 100M}
  egress: {rate: 100M}
EOF
until [[ $(kubectl -n demo get pod web-1 -o jsonpath='{.metadata.annotations.stickynet\.io/bandwidth-policy}') == web-1 ]]; do sleep 0.5; done
run kubectl -n demo get pod web-1 -o jsonpath='{.metadata.annotations}{"\n"}'
sleep 2 # the agent applies the annotations within a moment
say "Into web-1 (tbf on its host veth), then out of it (OpenFlow meter on its OVS port)"
run kubectl -n demo exec web-0 -- iperf3 -c "$ip" -t 6 -O 1
run kubectl -n demo exec web-0 -- iperf3 -c "$ip" -t 6 -O 1 -R
say "Scale to 2: web-2's pod goes, and its identity keeps its address (Retain, the default)"
run kubectl -n demo scale statefulset web --replicas=2
run kubectl -n demo wait --for=delete pod/web-2 --timeout=60s
# The release controller unbinds the address from the gone pod a grace
# (30 s) after; it is then held by the identity.
allocations() { _output/bin/stickynet-webhook allocations --socket _output/cluster/stickynet/webhook-allocations.sock "$@"; }
for _ in $(seq 120); do
  [[ $(allocations --pool demo --state held 2>/dev/null | wc -l) -ge 2 ]] && break
  sleep 1
done
say "Who has which address, from the webhook's cache of stickynet's state (on a cluster, in its container: kubectl -n <namespace> exec deploy/stickynet-webhook -- /usr/local/bin/stickynet-webhook allocations)"
run _output/bin/stickynet-webhook allocations --socket _output/cluster/stickynet/webhook-allocations.sock --pool demo
say "The pool's addresses"
run kubectl get ippool demo
if [[ ${KEEP:-} == 1 ]]; then
  say "The cluster stays up: export KUBECONFIG=$KUBECONFIG (kubectl is in $kube); stop it with: make cluster-down"
fi
