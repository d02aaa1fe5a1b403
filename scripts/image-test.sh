#!/usr/bin/env bash
# Build the Dockerfile and serve from the built image, without a Docker engine (`make image-test`).
#
# What it proves:
#   * the Dockerfile builds, all stages, with the real pip resolution of the package: torch==2.13.0 CPU
#     (the build fails on a CUDA torch or nvidia-* wheels) and onnxruntime, and `bertserve --help` runs in
#     the builder;
#   * the runtime image starts the way a container engine starts it: the image's own ENTRYPOINT + CMD and
#     ENV, as its USER (uid 10001, checked on the running process), with a model store mounted read-only
#     at /models; /health turns 200, POST /v1/classify and /v1/fill-mask answer, /metrics counts them;
#   * the image's onnxruntime works: the classifier is served with the onnx-int8 backend (exported and
#     quantized at start-up, into $HOME=/tmp), and bertserve_model_info says so;
#   * the image's HEALTHCHECK command exits 0 against the running server;
#   * the running service writes nothing in the image filesystem outside /tmp (so readOnlyRootFilesystem
#     with an emptyDir on /tmp is enough);
#   * SIGTERM drains and exits 0 within BERTSERVE_DRAIN_SECONDS plus a margin.
# What it cannot prove here (no container engine, no cluster): namespaces and cgroup limits (buildah's
# chroot isolation shares the host's PID/network namespaces and applies no CPU/memory limits), a truly
# read-only root filesystem, Docker's HEALTHCHECK scheduler, pulling from / pushing to a registry, and the
# BOOTSTRAP=1 stage (it trains for ~15 min; run it with IMAGE_TEST_BOOTSTRAP=1 when you have the time), and
# the TORCH_BUILD=cuda variant (its wheels come from PyTorch's CUDA index and it needs a GPU to mean anything;
# tests/deploy/test_image.py checks statically how the build argument picks the wheel).
#
# Needs root (buildah with vfs storage, debootstrap). Installs buildah and debootstrap with apt-get if
# missing. The base image is Debian bookworm + python3.11 from the apt mirror this machine already uses,
# made with debootstrap and passed through --build-arg BASE_IMAGE; torch comes from a local wheel when one
# lies in /opt/wheels (mounted into the build), otherwise from PyTorch's CPU index.
#
# Disk: buildah's vfs driver stores every layer as a full copy. By default the build commits one layer per
# stage (no --layers cache) and the script removes the test image and dangling layers when done, so it
# needs ~10 GB free while running; the Debian base image (~180 MB) is kept for the next run.
#
# Environment: IMAGE_TEST_WORK (scratch dir, default /var/tmp/bertserve-image-test), IMAGE_TEST_PORT (18000),
# IMAGE_TEST_BOOTSTRAP (0), IMAGE_TEST_LAYERS (1: cache every build step, much more disk),
# IMAGE_TEST_KEEP (1: keep the image and the container), IMAGE_TEST_REUSE (1: use a kept image, no build),
# PYTHON (host python with the project installed,
# default .venv/bin/python, used only to build the tiny test store).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

WORK=${IMAGE_TEST_WORK:-/var/tmp/bertserve-image-test}
PORT=${IMAGE_TEST_PORT:-18000}
BOOTSTRAP=${IMAGE_TEST_BOOTSTRAP:-0}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
BASE_IMAGE=localhost/bertserve-base:bookworm-py311
IMAGE=localhost/bertserve:image-test
BUILDAH=(buildah --storage-driver vfs)
SUITE=bookworm

KEEP=${IMAGE_TEST_KEEP:-0}
say() { printf '\n== %s\n' "$*"; }
fail() { printf 'image-test: FAIL: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || fail "run as root (buildah vfs storage and debootstrap need it)"
[[ -x $PYTHON ]] || fail "$PYTHON not found: create the virtualenv first (make venv)"
mkdir -p "$WORK"

# -- tools ------------------------------------------------------------------------------------------------
missing=()
command -v buildah > /dev/null || missing+=(buildah)
command -v debootstrap > /dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
buildah --version

# -- base image: Debian bookworm + python3.11 -----------------------------------------------------------
if ! "${BUILDAH[@]}" inspect --type image "$BASE_IMAGE" > /dev/null 2>&1; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$WORK/rootfs
  say "debootstrap $SUITE from $mirror into $rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1 ||
    { tail -30 "$WORK/debootstrap.log"; fail "debootstrap"; }
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  say "committing $BASE_IMAGE"
  ctr=$("${BUILDAH[@]}" from scratch)
  mnt=$("${BUILDAH[@]}" mount "$ctr")
  cp -a "$rootfs"/. "$mnt"/
  "${BUILDAH[@]}" umount "$ctr" > /dev/null
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 --label org.opencontainers.image.description="Debian $SUITE + python3 (local)" \
    "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$BASE_IMAGE" > /dev/null
  rm -rf "$rootfs"
fi
probe=$("${BUILDAH[@]}" from --quiet "$BASE_IMAGE")
"${BUILDAH[@]}" run --isolation chroot "$probe" -- python3 --version
"${BUILDAH[@]}" rm "$probe" > /dev/null

# -- build ------------------------------------------------------------------------------------------------
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "BOOTSTRAP=$BOOTSTRAP")
volumes=()
wheel=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1 || true)
if [[ -n $wheel ]]; then
  echo "torch from the local CPU wheel $wheel"
  volumes=(--volume /opt/wheels:/wheels:ro)
  build_args+=(--build-arg "TORCH_PIP_ARGS=--find-links /wheels")
fi
# A TLS-intercepting proxy between this machine and PyPI: hand the build the host's CA bundle (build only).
host_cert=${PIP_CERT:-}
if [[ -n $host_cert && -r $host_cert ]]; then
  echo "pip in the build trusts the host's CA bundle $host_cert"
  volumes+=(--volume "$host_cert:/run/host-ca.crt:ro")
  build_args+=(--build-arg PIP_CERT=/run/host-ca.crt)
fi
if [[ ${IMAGE_TEST_REUSE:-0} == 1 ]] && "${BUILDAH[@]}" inspect --type image "$IMAGE" > /dev/null 2>&1; then
  say "reusing $IMAGE (IMAGE_TEST_REUSE=1): not rebuilt"
else
  say "buildah bud -t $IMAGE (log: $WORK/build.log)"
  start=$(date +%s)
  layers=(--layers=false)
  [[ ${IMAGE_TEST_LAYERS:-0} == 1 ]] && layers=(--layers)
  if ! "${BUILDAH[@]}" bud --isolation chroot --network host --format docker "${layers[@]}" --force-rm \
    "${volumes[@]}" "${build_args[@]}" -t "$IMAGE" -f Dockerfile . > "$WORK/build.log" 2>&1; then
    tail -40 "$WORK/build.log"
    fail "image build"
  fi
  grep -E '^\[[0-9]+/[0-9]+\] (STEP 1/|COMMIT)|^torch |^install-torch: torch' "$WORK/build.log" || true
  echo "built in $(($(date +%s) - start)) s"
fi
"${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE"

# -- inspect the image config -----------------------------------------------------------------------------
"${BUILDAH[@]}" inspect --type image "$IMAGE" > "$WORK/image.json"
python3 - "$WORK/image.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))["Docker"]["config"]
assert config["User"] == "10001:10001", config["User"]
assert "8000/tcp" in config["ExposedPorts"], config["ExposedPorts"]
assert config["Healthcheck"]["Test"][0] == "CMD", config["Healthcheck"]
env = dict(item.split("=", 1) for item in config["Env"])
assert env["BERTSERVE_STORE"] == "/models" and env["BERTSERVE_HOST"] == "0.0.0.0", env
PY
# The image's ENTRYPOINT + CMD and its HEALTHCHECK test, as argument arrays.
mapfile -d '' -t run_cmd < <(python3 -c 'import json, sys
c = json.load(open(sys.argv[1]))["Docker"]["config"]
sys.stdout.write("\0".join((c.get("Entrypoint") or []) + (c.get("Cmd") or [])))' "$WORK/image.json")
mapfile -d '' -t healthcheck < <(python3 -c 'import json, sys
c = json.load(open(sys.argv[1]))["Docker"]["config"]
sys.stdout.write("\0".join(c["Healthcheck"]["Test"][1:]))' "$WORK/image.json")
echo "image config ok: user 10001:10001, port 8000, entrypoint+cmd: ${run_cmd[*]}"

# -- a tiny real store, mounted read-only at /models -------------------------------------------------------
# Made afresh each run (seconds): a store made by an older checkout may not pass today's load checks.
store=$WORK/store
rm -rf "$store"
"$PYTHON" scripts/make_tiny_store.py "$store" > "$WORK/store.log" 2>&1 || { cat "$WORK/store.log"; fail "tiny store"; }
chmod -R a+rX "$store"

# -- run it -----------------------------------------------------------------------------------------------
if curl -s -o /dev/null "http://127.0.0.1:$PORT/"; then fail "port $PORT is already in use (IMAGE_TEST_PORT)"; fi
ctr=$("${BUILDAH[@]}" from --quiet "$IMAGE")
cleanup() {
  # The server runs in its own process group (setsid below): end all of it, workers included, even when
  # `buildah run` itself is gone (its children can outlive it and keep the port).
  if [[ -n ${server_pgid:-} ]] && kill -0 -- "-$server_pgid" 2> /dev/null; then
    kill -TERM -- "-$server_pgid" 2> /dev/null || true
    sleep 5
    kill -KILL -- "-$server_pgid" 2> /dev/null || true
  fi
  if [[ $KEEP != 1 ]]; then
    "${BUILDAH[@]}" rm "$ctr" > /dev/null 2>&1 || true
    "${BUILDAH[@]}" rmi "$IMAGE" > /dev/null 2>&1 || true
    "${BUILDAH[@]}" rmi --prune > /dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
# Serve on loopback only, a short drain so the SIGTERM check below is quick, the classifier on onnxruntime.
"${BUILDAH[@]}" config --env BERTSERVE_HOST=127.0.0.1 --env "BERTSERVE_PORT=$PORT" \
  --env BERTSERVE_DRAIN_SECONDS=3 --env BERTSERVE_TORCH_THREADS=1 \
  --env BERTSERVE_MODEL_BACKENDS=sentiment=onnx-int8 "$ctr"
mnt=$("${BUILDAH[@]}" mount "$ctr")
marker=$WORK/started
touch "$marker"
sleep 1
say "buildah run (chroot isolation, host network) ${run_cmd[*]} on 127.0.0.1:$PORT"
setsid "${BUILDAH[@]}" run --isolation chroot --network host --volume "$store:/models:ro" "$ctr" -- \
  "${run_cmd[@]}" > "$WORK/server.log" 2>&1 &
server_pid=$!
server_pgid=$server_pid  # setsid: the group of everything the container runs
base=http://127.0.0.1:$PORT
for _ in $(seq 240); do
  if curl -fsS -o /dev/null "$base/health" 2> /dev/null; then break; fi
  kill -0 "$server_pid" 2> /dev/null || { tail -40 "$WORK/server.log"; fail "server exited"; }
  sleep 0.5
done
curl -fsS "$base/health" || { tail -40 "$WORK/server.log"; fail "/health never turned 200"; }
echo

# The serving process really runs as uid 10001.
# (the one started by our `buildah run`: other servers may run on this machine)
descends_from() {  # PID ANCESTOR
  local p=$1
  while [[ -n $p && $p != 0 && $p != 1 ]]; do
    [[ $p == "$2" ]] && return 0
    p=$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2> /dev/null || true)
  done
  return 1
}
# The Python process itself, not buildah's `buildah-chroot-exec` parent (same arguments; a Go program that
# dies on SIGTERM, killing its child). pgrep lists by pid: the main process before its forked workers.
pid=
for candidate in $(pgrep -f "^/opt/venv/bin/python[0-9.]* /opt/venv/bin/bertserve serve" || true); do
  if descends_from "$candidate" "$server_pid"; then pid=$candidate; break; fi
done
[[ -n $pid ]] || fail "no 'bertserve serve' process under buildah run ($server_pid) found"
echo "server process $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline"), root $(readlink "/proc/$pid/root")"
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[[ $uid == 10001 ]] || fail "server runs as uid $uid, expected 10001"
echo "server process $pid runs as uid $uid"

say "POST /v1/classify"
classify=$(curl -fsS -H 'content-type: application/json' \
  -d '{"inputs": ["this drug worked great", "terrible side effects"], "model": "sentiment"}' "$base/v1/classify")
echo "$classify"
python3 - "$classify" <<'EOF'
import json, sys
body = json.loads(sys.argv[1])
assert body["model"] == "sentiment" and body["version"] == "1", body
assert len(body["predictions"]) == 2, body
for ranked in body["predictions"]:
    assert sorted(p["label"] for p in ranked) == ["negative", "neutral", "positive"], ranked
    assert abs(sum(p["score"] for p in ranked) - 1) < 1e-3, ranked
EOF
say "POST /v1/fill-mask"
curl -fsS -H 'content-type: application/json' -d '{"inputs": ["the capital of france is [MASK]."], "top_k": 2}' \
  "$base/v1/fill-mask" | head -c 400
echo
say "GET /metrics"
curl -fsS "$base/metrics" | grep -E '^bertserve_(requests_total|model_info)\{' | tee "$WORK/metrics.txt"
grep '^bertserve_requests_total{' "$WORK/metrics.txt" | grep 'endpoint="classify"' | grep 'code="200"' |
  grep -q '} 1.0$' || fail "classify request not counted"
grep '^bertserve_model_info{' "$WORK/metrics.txt" | grep 'model="sentiment"' | grep -q 'backend="onnx-int8"' ||
  fail "the classifier is not served by onnx-int8 (onnxruntime missing from the image?)"

say "HEALTHCHECK command from the image config"
"${BUILDAH[@]}" run --isolation chroot --network host "$ctr" -- "${healthcheck[@]}" ||
  fail "HEALTHCHECK command failed"
echo "healthcheck exit 0"

say "files the running service wrote outside /tmp"
# Files only: a directory's mtime also moves when buildah creates its mount points and files in it.
written=$(cd "$mnt" && find . -xdev ! -type d -newer "$marker" ! -path './tmp/*' \
  ! -path './etc/hosts' ! -path './etc/resolv.conf' ! -path './etc/hostname' ! -path './run/.containerenv' -print)
if [[ -n $written ]]; then
  echo "$written"
  fail "the service wrote outside /tmp (a readOnlyRootFilesystem would break it)"
fi
echo "none (buildah's own /etc/hosts, /etc/resolv.conf, /run/.containerenv excepted)"

say "SIGTERM: drain, then exit"
kill -TERM "$pid"
for _ in $(seq 40); do kill -0 "$server_pid" 2> /dev/null || break; sleep 0.5; done
if kill -0 "$server_pid" 2> /dev/null; then fail "server still running 20 s after SIGTERM"; fi
wait "$server_pid" && rc=0 || rc=$?
server_pid=
echo "server exited with $rc after SIGTERM"
[[ $rc == 0 || $rc == 143 ]] || { tail -20 "$WORK/server.log"; fail "exit status $rc"; }

say "image-test: PASS ($IMAGE from $BASE_IMAGE)"
[[ $KEEP == 1 ]] || echo "(removing the test image and dangling layers; IMAGE_TEST_KEEP=1 keeps them)"
