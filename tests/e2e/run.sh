#!/usr/bin/env bash
# End-to-end on a kind cluster: build and load the images, install Redis, Kafka and
# PostgreSQL, `helm install` the chart, apply a CouponEvent that opens shortly, and check the
# whole life of the event: scale-up at warm-up, a burst through a port-forward, exactly
# `limit` 201s over the api pods and `limit` rows, scale-down after the window and drain,
# clean-up on delete (only the event's tombstone left in Redis).
#
# Needs docker, kind, kubectl, helm and cargo. Not part of `dev/test` (no docker there).
#   tests/e2e/run.sh                 # KEEP_CLUSTER=1 keeps the cluster afterwards
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

cluster=${CLUSTER:-coupon-e2e}
ns=shop
# A name and an image tag of this run only: a re-run on a kept cluster never counts the rows
# or runs the images of an earlier run.
run_id=$(date -u +%Y%m%d%H%M%S)-$$
event=e2e-sale-$run_id
tag=e2e-$run_id
limit=100

log() { printf '[e2e] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_until() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out waiting for $what"
    sleep 2
  done
  log "ok: $what"
}

replicas_are() { # replicas_are DEPLOYMENT N
  [ "$(kubectl -n "$ns" get deployment "$1" -o jsonpath='{.spec.replicas}')" = "$2" ]
}

phase_is() {
  [ "$(kubectl -n "$ns" get couponevent "$event" -o jsonpath='{.status.phase}')" = "$1" ]
}

for tool in docker kind kubectl helm cargo; do
  command -v "$tool" >/dev/null || fail "$tool is required"
done

# On failure: what the cluster knew, before it goes.
diagnostics() {
  local dir=${E2E_DIAGNOSTICS:-/tmp/coupon-e2e-diagnostics}
  mkdir -p "$dir"
  log "collecting diagnostics in $dir"
  kubectl -n "$ns" get all,couponevents,events -o wide >"$dir/get.txt" 2>&1 || true
  kubectl -n "$ns" describe deployments,pods,couponevents >"$dir/describe.txt" 2>&1 || true
  for d in coupon-operator coupon-api coupon-consumer; do
    kubectl -n "$ns" logs "deployment/$d" --all-containers --tail=2000 >"$dir/$d.log" 2>&1 || true
  done
  kind export logs "$dir/kind" --name "$cluster" >/dev/null 2>&1 || true
}

cleanup() {
  local status=$?
  rm -f "${archive:-}"
  if [ -n "${forward_pid:-}" ]; then kill "$forward_pid" 2>/dev/null || true; fi
  if [ "$status" -ne 0 ]; then diagnostics; fi
  if [ -z "${KEEP_CLUSTER:-}" ]; then kind delete cluster --name "$cluster" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# Everything that compiles before the cluster and the event exist: the window opens 90 s
# after the event is applied, far less than a release build takes.
log "building the load tool"
cargo build --quiet --release --locked -p coupon-service
load_tool=${CARGO_TARGET_DIR:-target}/release/coupon-service

kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 120s

log "building images"
docker build --target coupon-service -t "coupon-service:$tag" .
docker build --target coupon-operator -t "coupon-operator:$tag" .
# Through an archive: `kind load docker-image` fails with Docker's containerd image store
# (kubernetes-sigs/kind#3795).
archive=$(mktemp --suffix=.tar)
docker save -o "$archive" "coupon-service:$tag" "coupon-operator:$tag"
kind load image-archive --name "$cluster" "$archive"
rm -f "$archive"

log "installing Redis, Kafka and PostgreSQL"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" apply -f tests/e2e/deps.yaml
for d in redis kafka postgres; do kubectl -n "$ns" rollout status "deployment/$d" --timeout=300s; done
kubectl -n "$ns" create secret generic coupon-connections \
  --from-literal=REDIS_URL=redis://redis:6379 \
  --from-literal=DATABASE_URL=postgres://postgres:postgres@postgres:5432/coupons \
  --dry-run=client -o yaml | kubectl apply -f -
# The api proves users with HS256 tokens (the chart's default mode); the load tool signs
# one per user with the same secret.
jwt_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
kubectl -n "$ns" create secret generic coupon-jwt --from-literal=JWT_SECRET="$jwt_secret" \
  --dry-run=client -o yaml | kubectl apply -f -

log "installing the chart"
helm upgrade --install coupons charts/coupon-system -n "$ns" -f examples/kind-values.yaml \
  --set image.service.tag="$tag" --set image.operator.tag="$tag" --wait --timeout 300s

start=$(date -u -d '+90 seconds' +%Y-%m-%dT%H:%M:%SZ)
end=$(date -u -d '+240 seconds' +%Y-%m-%dT%H:%M:%SZ)
log "CouponEvent $event: limit $limit, $start .. $end, warm-up 60s"
kubectl -n "$ns" apply -f - <<YAML
apiVersion: coupons.fcfs.dev/v1alpha1
kind: CouponEvent
metadata: {name: $event, namespace: $ns}
spec:
  limit: $limit
  topic: coupon_create
  schedule: {start: "$start", end: "$end", warmUp: 60s}
  api: {deployment: coupon-api, replicas: 2, idleReplicas: 0}
  consumer: {deployment: coupon-consumer, replicas: 1, idleReplicas: 0}
  onDelete: Delete
YAML

provisioned() {
  [ "$(kubectl -n "$ns" get couponevent "$event" -o jsonpath='{.status.conditions[?(@.type=="Provisioned")].status}')" = True ]
}
wait_until 60 "event provisioned (topic and Redis configuration)" provisioned
wait_until 120 "api scaled up at warm-up" replicas_are coupon-api 2
wait_until 30 "consumer scaled up at warm-up" replicas_are coupon-consumer 1
kubectl -n "$ns" rollout status deployment/coupon-api --timeout=180s
kubectl -n "$ns" rollout status deployment/coupon-consumer --timeout=180s
wait_until 120 "event open" phase_is Open

log "burst through a port-forward"
kubectl -n "$ns" port-forward svc/coupon-api 18080:80 >/dev/null 2>&1 &
forward_pid=$!
wait_until 30 "port-forward" curl -sf http://127.0.0.1:18080/healthz
anonymous=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
  -d '{"userId":"anyone"}' "http://127.0.0.1:18080/v1/events/$event/apply")
[ "$anonymous" = 401 ] || fail "an apply without a token was answered $anonymous, not 401"
LOAD_JWT_SECRET=$jwt_secret "$load_tool" load \
  --url http://127.0.0.1:18080 --event "$event" --requests 3000 --concurrency 64 \
  --jwt-issuer https://id.e2e.test --jwt-audience coupons

# The 201s every api pod answered, from their /metrics through the API server's pod proxy
# (a port-forward reaches one pod only). Read while sold out keeps both replicas up; the
# pods are this run's (its image tag), so their counters hold this event's answers alone.
issued_answers() {
  local pods pod
  pods=$(kubectl -n "$ns" get pods -l app.kubernetes.io/instance=coupons,app.kubernetes.io/name=coupon-api \
    --field-selector=status.phase=Running -o jsonpath='{.items[*].metadata.name}')
  [ -n "$pods" ] || fail "no running api pod to read the metrics of"
  for pod in $pods; do
    kubectl get --raw "/api/v1/namespaces/$ns/pods/$pod:9090/proxy/metrics" || fail "metrics of $pod"
  done | awk '$1 == "coupon_apply_answers_total{status=\"issued\"}" { sum += $2 } END { printf "%d\n", sum }'
}
issued=$(issued_answers)
[ "$issued" = "$limit" ] || fail "the api pods answered $issued x 201, expected exactly $limit"
log "ok: $issued x 201 over the api pods"

# Rows carry the event key: namespace, name and the CouponEvent's UID.
uid=$(kubectl -n "$ns" get couponevent "$event" -o jsonpath='{.metadata.uid}')
rows() {
  kubectl -n "$ns" exec deploy/postgres -- psql -U postgres -d coupons -tAc \
    "SELECT count(*) FROM coupons WHERE event = '$ns/$event@$uid'"
}
rows_are_limit() { [ "$(rows)" = "$limit" ]; }
wait_until 120 "exactly $limit rows in PostgreSQL" rows_are_limit
wait_until 60 "sold out" phase_is SoldOut
replicas_are coupon-api 2 || fail "sold out must keep the api up (it answers 410)"
wait_until 300 "closed after the window and the drain" phase_is Closed
wait_until 60 "api scaled to its idle replicas after the window" replicas_are coupon-api 0
wait_until 60 "consumer scaled down after the drain" replicas_are coupon-consumer 0
[ "$(rows)" = "$limit" ] || fail "rows changed after the window"
failed=$(kubectl -n "$ns" exec deploy/postgres -- psql -U postgres -d coupons -tAc \
  "SELECT count(*) FROM failed_events WHERE position(convert_to('$event', 'UTF8') in payload) > 0")
[ "$failed" = 0 ] || fail "$failed records of $event in failed_events"

log "delete and clean-up"
kubectl -n "$ns" delete couponevent "$event" --wait=true --timeout=120s
redis() { kubectl -n "$ns" exec deploy/redis -- redis-cli "$@"; }
# Deletion leaves a tombstone for a day in place of the configuration (`deleted` = 1 and
# nothing else, expiring), so api replicas that served the event answer 404, not 503; every
# other key of the event (core/src/redis/keyspace/mod.rs: those of its tag, and of the tags
# of its other shards) is gone, and so is its entry in the set of provisioned events.
config="coupon:{$ns/$event}:config"
tombstone=$(redis hgetall "$config")
[ "$tombstone" = $'deleted\n1' ] || fail "$config after onDelete: Delete is not the tombstone (deleted 1): $(echo "$tombstone" | paste -sd' ')"
ttl=$(redis ttl "$config")
if ! [[ $ttl =~ ^[0-9]+$ ]] || ((ttl == 0 || ttl > 86400)); then
  fail "the tombstone $config does not expire within a day (TTL $ttl)"
fi
tag_keys=$(redis --scan --pattern "coupon:{$ns/$event}:*")
shard_keys=$(redis --scan --pattern "coupon:{$ns/$event#*")
left=$(printf '%s\n%s\n' "$tag_keys" "$shard_keys" | grep -vxF -e "$config" -e '' || true)
[ -z "$left" ] || fail "Redis keys of $event left after onDelete: Delete: $(echo "$left" | paste -sd' ')"
[ "$(redis sismember coupon:events "$ns/$event")" = 0 ] || fail "$ns/$event still in coupon:events"
log "ok: only the tombstone left in Redis (TTL ${ttl}s)"
log "PASS"
