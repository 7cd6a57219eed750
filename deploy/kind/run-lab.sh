#!/usr/bin/env bash
# The user's NetworkPolicy lab (Tasks 2.2.1-2.2.6) on a real kind cluster with netpol as its
# CNI and policy engine: creates the cluster (deploy/kind/cluster.yaml: one control plane,
# two workers, default CNI off), builds the image from source and loads it, installs netpol
# (kubectl apply -k deploy/), waits until every node is Ready, runs the lab's commands as
# the lab writes them, and prints expected vs observed. Exit 0 only when every check
# matches. KEEP=1 leaves the cluster up; ENGINE=docker|podman picks the container engine.
#
# Needs kind, kubectl and docker or podman. (The development machines have none of them:
# this script has not been run there; cargo xtask lab runs the same lab in local mode.)
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=netpol
IMAGE=localhost/netpol:dev
LAB=examples/lab
ENGINE=${ENGINE:-$(command -v docker >/dev/null && echo docker || echo podman)}
for tool in kind kubectl "$ENGINE"; do
  command -v "$tool" >/dev/null || { echo "run-lab: $tool is not installed" >&2; exit 2; }
done
work=$(mktemp -d)
cleanup() {
  rm -rf "$work"
  if [[ "${KEEP:-0}" != 1 ]]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

echo "== cluster, image, install"
kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --config deploy/kind/cluster.yaml
"$ENGINE" build -f deploy/Containerfile -t "$IMAGE" .
"$ENGINE" save -o "$work/netpol.tar" "$IMAGE"
kind load image-archive "$work/netpol.tar" --name "$CLUSTER"
kubectl apply -k deploy/
# CiliumNetworkPolicy's CRD unless Cilium's is there: create never replaces.
kubectl get crd ciliumnetworkpolicies.cilium.io >/dev/null 2>&1 || kubectl create -f deploy/cilium/
kubectl -n kube-system rollout status daemonset/netpol-agent --timeout=300s
kubectl wait --for=condition=Ready nodes --all --timeout=300s
kubectl -n kube-system rollout status deployment/coredns --timeout=300s

# ---- checks: each records task, what, expected, observed
results=()
record() { # task what expected observed
  local verdict=ok
  [[ "$3" == "$4" ]] || verdict=MISMATCH
  results+=("$1|$2|$3|$4|$verdict")
}
run() { # prints the command as the lab writes it, runs it; sets out and code
  echo "\$ $*"
  set +e; out=$("$@" 2>&1); code=$?; set -e
  printf '%s\n\n' "$out"
}
curl_check() { # task var expected(200|timeout)
  local task=$1 var=$2 want=$3 observed
  run kubectl exec "${!var}" -- curl -I --connect-timeout 5 backend:8080
  if grep -q "HTTP/1.1 200 OK" <<<"$out"; then observed=200
  elif [[ $code == 28 ]]; then observed=timeout
  else observed="exit $code"; fi
  record "$task" "curl \$$var -> backend:8080" "$want" "$observed"
}
probe() { # task from-var to-var port expected(connected|blocked)
  local task=$1 from=$2 to=$3 port=$4 want=$5 ip
  ip=$(kubectl get pod -A --field-selector "metadata.name=${!to}" -o jsonpath='{.items[0].status.podIP}')
  # The servers answer "ok" (nc -e echo ok): connected means that answer came back.
  run kubectl -n "$(ns_of "${!from}")" exec "${!from}" -- nc -w 3 "$ip" "$port"
  record "$task" "\$$from -> \$$to:$port" "$want" "$([[ $code == 0 && $out == *ok* ]] && echo connected || echo blocked)"
}
resolve() { # task from-var name
  local task=$1 from=$2 name=$3
  run kubectl exec "${!from}" -- nslookup "$name"
  record "$task" "\$$from resolves $name" resolved "$([[ $code == 0 ]] && echo resolved || echo "exit $code")"
}
pod_of() { kubectl get pods -n "$1" -l "$2" -o jsonpath='{.items[0].metadata.name}'; }
ns_of() { kubectl get pod -A --field-selector "metadata.name=$1" -o jsonpath='{.items[0].metadata.namespace}'; }
available() { kubectl wait --for=condition=Available deployment --all -n "$1" --timeout=300s >/dev/null; }

echo "== Task 2.2.1: deploy the simple app"
run kubectl apply -f "$LAB/simple-app.yaml"
available default
run kubectl get deployment,svc
export FRONTEND=$(pod_of default app=frontend)
export NOT_FRONTEND=$(pod_of default app=not-frontend)

echo "== Task 2.2.2: verify connectivity"
curl_check 2.2.2 FRONTEND 200
curl_check 2.2.2 NOT_FRONTEND 200

echo "== Task 2.2.3: deny traffic with a Network Policy"
run kubectl apply -f "$LAB/backend-ingress-deny.yaml"
run kubectl get netpol

echo "== Task 2.2.4: verify connectivity again"
curl_check 2.2.4 FRONTEND timeout
curl_check 2.2.4 NOT_FRONTEND timeout

echo "== Task 2.2.5: allow traffic from frontend to backend"
run kubectl apply -f "$LAB/backend-allow-ingress-frontend.yaml"
curl_check 2.2.5 FRONTEND 200
curl_check 2.2.5 NOT_FRONTEND timeout
run kubectl get netpol
run kubectl delete netpol backend-allow-ingress-frontend backend-ingress-deny
run kubectl delete -f "$LAB/simple-app.yaml" --wait=true

echo "== Task 2.2.6: network isolation for the example frontend/backend"
run kubectl apply -f deploy/kind/example-app.yaml
available default
available ingress-haproxy
export EXAMPLE_FRONTEND=$(pod_of default app=example-frontend)
export MARIADB=$(pod_of default app=mariadb)
export WEBSHELL=$(pod_of default app.kubernetes.io/name=webshell)
export INGRESS=$(pod_of ingress-haproxy app.kubernetes.io/name=haproxy-ingress)
export KUBE_DNS=$(pod_of kube-system k8s-app=kube-dns)
probe 2.2.6 EXAMPLE_FRONTEND MARIADB 3306 connected
run kubectl apply -f "$LAB/deny-netpol.yaml"
probe 2.2.6 EXAMPLE_FRONTEND MARIADB 3306 blocked
resolve 2.2.6 EXAMPLE_FRONTEND mariadb
probe 2.2.6 INGRESS WEBSHELL 7681 connected
probe 2.2.6 EXAMPLE_FRONTEND WEBSHELL 7681 blocked
run kubectl apply -f "$LAB/frontend-netpol.yaml"
probe 2.2.6 EXAMPLE_FRONTEND MARIADB 3306 connected
probe 2.2.6 INGRESS EXAMPLE_FRONTEND 5000 connected
probe 2.2.6 WEBSHELL MARIADB 3306 blocked

echo "== Expected vs observed"
mismatches=0
printf '%-6s %-44s %-10s %-10s %s\n' task check expected observed result
for r in "${results[@]}"; do
  IFS='|' read -r task what want got verdict <<<"$r"
  printf '%-6s %-44s %-10s %-10s %s\n' "$task" "$what" "$want" "$got" "$verdict"
  [[ $verdict == ok ]] || mismatches=$((mismatches + 1))
done
echo "${#results[@]} checks, $mismatches mismatches"
[[ $mismatches == 0 ]]
