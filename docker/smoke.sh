#!/usr/bin/env bash
# End-to-end check of the Docker deployment: build the images, start the stack with compose,
# migrate, create an API key, submit jobs over HTTP, wait for `succeeded`, print the calls,
# check the deployment's promises (loopback port, /metrics token, non-root, index volume),
# tear everything down. Works with docker (compose v2) or podman (podman compose / podman-compose).
#
#   docker/smoke.sh                                   # public base images
#   docker/smoke.sh --base-image localhost/python-base   # or BASE_IMAGE=...; see docs/docker.md
#
# Environment: ENGINE (docker|podman), COMPOSE (the compose command), BASE_IMAGE,
# POSTGRES_IMAGE, REDIS_IMAGE, HYFUNC_MODELS (models dir, default models/general as in the compose file),
# SMOKE_PORT (host port, default 18000), SMOKE_JOBS (default 3), KEEP=1 (leave the stack up),
# BUILD_NETWORK (e.g. host: `build --network host`, for podman in a sandbox), TORCH_PIP_ARGS
# (where the worker's CPU torch comes from, e.g. "--find-links http://127.0.0.1:8765/").
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

while [ $# -gt 0 ]; do
  case "$1" in
    --base-image) BASE_IMAGE=$2; shift 2 ;;
    --base-image=*) BASE_IMAGE=${1#*=}; shift ;;
    --keep) KEEP=1; shift ;;
    *) echo "usage: $0 [--base-image IMAGE] [--keep]" >&2; exit 2 ;;
  esac
done

ENGINE=${ENGINE:-$(command -v docker >/dev/null && echo docker || echo podman)}
if [ -z "${COMPOSE:-}" ]; then
  if "$ENGINE" compose version >/dev/null 2>&1; then COMPOSE="$ENGINE compose"
  elif command -v podman-compose >/dev/null; then COMPOSE=podman-compose
  elif command -v docker-compose >/dev/null; then COMPOSE=docker-compose
  else echo "no compose: install docker compose or podman-compose" >&2; exit 2; fi
fi
export BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
export POSTGRES_IMAGE=${POSTGRES_IMAGE:-postgres:16-alpine}
export REDIS_IMAGE=${REDIS_IMAGE:-redis:7-alpine}
export HYFUNC_API_IMAGE=hyfunc-api:smoke HYFUNC_WORKER_IMAGE=hyfunc-worker:smoke
export HYFUNC_MODELS=${HYFUNC_MODELS:-$root/models/general}
export HYFUNC_API_PORT=${SMOKE_PORT:-18000}
export HYFUNC_METRICS_TOKEN=${HYFUNC_METRICS_TOKEN:-$(python3 -c 'import secrets; print(secrets.token_hex(24))')}
export POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-$(python3 -c 'import secrets; print(secrets.token_hex(12))')}
JOBS=${SMOKE_JOBS:-3}
project=hyfunc-smoke
compose() { $COMPOSE -p "$project" -f docker/docker-compose.yml "$@"; }
api="http://127.0.0.1:$HYFUNC_API_PORT"
t0=$(date +%s)
say() { printf '[smoke %4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }
fail() { say "FAILED: $*"; exit 1; }

teardown() {
  local rc=$?
  if [ "${KEEP:-0}" = 1 ]; then say "KEEP=1: stack left up (project $project)"; return; fi
  if [ $rc -ne 0 ]; then
    say "logs (last 40 lines per service):"
    compose logs --tail 40 2>&1 | tail -200 || true
  fi
  say "tearing down"
  compose down -v >/dev/null 2>&1 || true
  say "exit $rc"
}
trap teardown EXIT

# Container id of a service (compose v2, podman-compose and docker-compose name them differently).
cid() { "$ENGINE" ps -aq --filter "label=com.docker.compose.project=$project" \
          --filter "label=com.docker.compose.service=$1" | head -1; }

# Wait until a service's healthcheck passes. Podman runs healthchecks from systemd timers,
# which a machine without systemd lacks: there the check is run here, on each poll.
wait_healthy() {
  local service=$1 timeout=$2 start id status
  start=$(date +%s)
  while :; do
    id=$(cid "$service")
    if [ -n "$id" ]; then
      if [ "$ENGINE" = podman ]; then
        podman healthcheck run "$id" >/dev/null 2>&1 && status=healthy || status=waiting
      else
        status=$(docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null || echo waiting)
      fi
      [ "$status" = healthy ] && { say "$service healthy ($(( $(date +%s) - start )) s)"; return; }
      [ "$("$ENGINE" inspect -f '{{.State.Running}}' "$id")" = true ] || fail "$service exited"
    fi
    [ $(( $(date +%s) - start )) -lt "$timeout" ] || fail "$service not healthy after $timeout s"
    sleep 2
  done
}

say "engine: $ENGINE ($("$ENGINE" --version)); compose: $COMPOSE"
say "base image: $BASE_IMAGE; postgres: $POSTGRES_IMAGE; redis: $REDIS_IMAGE"
net=()
[ -n "${BUILD_NETWORK:-}" ] && net=(--network "$BUILD_NETWORK")
for target in api worker-cpu; do
  tag=$([ "$target" = api ] && echo "$HYFUNC_API_IMAGE" || echo "$HYFUNC_WORKER_IMAGE")
  args=(--build-arg BASE_IMAGE="$BASE_IMAGE")
  [ "$target" = worker-cpu ] && [ -n "${TORCH_PIP_ARGS:-}" ] && args+=(--build-arg TORCH_PIP_ARGS="$TORCH_PIP_ARGS")
  b0=$(date +%s)
  "$ENGINE" build "${net[@]}" -f docker/Dockerfile --target "$target" "${args[@]}" \
    -t "$tag" . > "/tmp/$project-build-$target.log" 2>&1 \
    || { tail -30 "/tmp/$project-build-$target.log"; fail "build $target"; }
  say "built $tag ($target) in $(( $(date +%s) - b0 )) s; $("$ENGINE" image inspect -f '{{.Size}}' "$tag" \
       | awk '{printf "%.0f MB", $1/1e6}')"
done
"$ENGINE" run --rm "$HYFUNC_API_IMAGE" python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is not None)' \
  || fail "the api image carries torch"
say "api image: no torch"

compose down -v >/dev/null 2>&1 || true
say "starting postgres, redis"
compose up -d postgres redis
wait_healthy postgres 120
wait_healthy redis 60

say "migrate (one-shot service)"
compose run --rm migrate || fail "migrate"
say "create an API key (the documented command)"
key=$(compose run --rm migrate hyfunc keys create --tenant smoke | tr -d '\r' | grep -E '^hf_' | tail -1)
[ -n "$key" ] || fail "no key printed"
say "key ${key:0:10}…"

# --no-deps: their dependencies are up and the migration ran (above); podman-compose would
# otherwise tie them to the exited migrate container, which podman 4.3 cannot start them with.
say "starting api, worker"
compose up -d --no-deps api worker
wait_healthy api 120
wait_healthy worker 600

# The published port is on loopback only, and /metrics needs the token.
bound=$("$ENGINE" port "$(cid api)" 8000 | head -1)
say "api published on $bound"
case "$bound" in 127.0.0.1:*) ;; *) fail "api published beyond loopback: $bound" ;; esac
code=$(curl -s -o /dev/null -w '%{http_code}' "$api/metrics")
[ "$code" = 401 ] || fail "/metrics without the token answered $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $HYFUNC_METRICS_TOKEN" "$api/metrics")
[ "$code" = 200 ] || fail "/metrics with the token answered $code"
say "/metrics: 401 without the token, 200 with it"
for service in api worker; do
  uid=$("$ENGINE" exec "$(cid "$service")" id -u)
  [ "$uid" != 0 ] || fail "$service runs as root"
  say "$service runs as uid $uid"
done
curl -sf "$api/healthz" >/dev/null || fail "/healthz not ready with a live worker"
say "/healthz: $(curl -s "$api/healthz" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["status"], "workers alive:", d["workers"]["alive"])')"

say "submitting $JOBS jobs (examples/requests.jsonl) to POST /v1/jobs/batch"
s0=$(date +%s.%N)
head -n "$JOBS" examples/requests.jsonl > "/tmp/$project-jobs.jsonl"
ids=$(curl -sf -H "X-API-Key: $key" -H 'Content-Type: application/x-ndjson' \
        --data-binary "@/tmp/$project-jobs.jsonl" "$api/v1/jobs/batch" \
      | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["ids"]))') || fail "submit"
for id in $ids; do
  for _ in $(seq 1 150); do
    body=$(curl -sf -H "X-API-Key: $key" "$api/v1/jobs/$id") || fail "GET /v1/jobs/$id"
    status=$(echo "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
    case "$status" in succeeded|failed) break ;; esac
    sleep 1
  done
  [ "$status" = succeeded ] || fail "job $id ended $status: $body"
  echo "$body" | python3 -c '
import json, sys
job = json.load(sys.stdin)
print("  %s: %s; calls: %s" % (job["client_id"], job["status"], json.dumps(job["calls"])))'
done
say "all $JOBS jobs succeeded ($(python3 -c "import time; print(round(time.time() - $s0, 1))") s from submit)"

index=$("$ENGINE" exec "$(cid worker)" ls /var/lib/hyfunc/index | tr '\n' ' ')
[ -n "$index" ] || fail "the function index volume is empty"
say "function index on its volume: $index"
# A models directory whose LMS is a pulled base (models/general: "base:smollm2-135m-instruct"):
# the worker pulled it on first start into the model-cache volume, where a recreation finds it.
if grep -q '"base:' "$HYFUNC_MODELS/hyfunc.json" 2>/dev/null; then
  bases=$("$ENGINE" exec "$(cid worker)" ls /var/cache/hyfunc/bases 2>/dev/null | tr '\n' ' ')
  [ -n "$bases" ] || fail "the base checkpoint is not in the model-cache volume"
  say "base checkpoint on the model-cache volume: $bases"
fi
# restart: unless-stopped brings back a service whose process exits on its own.
restarts() { "$ENGINE" inspect -f '{{.RestartCount}}' "$(cid api)"; }
before=$(restarts)
"$ENGINE" exec "$(cid api)" python -c 'import os, signal; os.kill(1, signal.SIGTERM)' || true
for _ in $(seq 1 60); do [ "$(restarts)" -gt "$before" ] && break; sleep 1; done
[ "$(restarts)" -gt "$before" ] || fail "api was not restarted after its process exited"
wait_healthy api 120
say "api restarted by its restart policy after its process exited (restart count $(restarts))"

say "images: $("$ENGINE" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'hyfunc-(api|worker):smoke' | tr '\n' ';')"
say "SMOKE OK"
