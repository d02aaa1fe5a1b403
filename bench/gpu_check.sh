#!/usr/bin/env bash
# The CUDA path end to end, in one call on a machine with an NVIDIA GPU and a CUDA build of torch:
#   1. `bertserve serve --device cuda` on a tiny random store (or STORE): /health, a classify and a fill-mask
#      answer, /v1/embeddings (float and base64) and /v1/embed vectors of unit length, a /v1/explain answer
#      with one attribution per token, attention [layers][heads][tokens][tokens] and a small convergence
#      delta, /v1/models and bertserve_model_info saying cuda:N, the fp16 verification line in the log;
#   2. a short `python -m bench.run --device cuda` (synthetic texts, no download): the backends table on the
#      GPU and the served table against the GPU's in-process ceiling.
# Exits non-zero at the first failed check.    Usage: bench/gpu_check.sh [STORE]   (PYTHON=... to pick one;
# BENCH=0 stops after step 1)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
work=$(mktemp -d)
store=${1:-$work/model_store}
port=${PORT:-8765}
base=http://127.0.0.1:$port

"$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print(torch.__version__, torch.cuda.get_device_name(0))'
if [ ! -d "$store" ]; then
    "$PYTHON" scripts/make_tiny_store.py "$store"
    "$PYTHON" -c "import sys; from pathlib import Path; from tests.tiny_models import build_sentence_encoder
build_sentence_encoder(Path(sys.argv[1]))" "$work/encoder"
    "$PYTHON" -m bertserve.cli store import "$work/encoder" --name minilm --alias production --store "$store"
fi

"$PYTHON" -m bertserve.cli serve --store "$store" --device cuda --port "$port" --log-level info >"$work/serve.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    curl -fs "$base/health" >/dev/null && break
    kill -0 $server 2>/dev/null || { tail -20 "$work/serve.log"; echo "FAIL: server exited"; exit 1; }
    sleep 1
done
curl -fsS -H 'content-type: application/json' -d '{"inputs": ["it worked", "it did not"]}' "$base/v1/classify"
echo
curl -fsS -H 'content-type: application/json' -d '{"inputs": "the [MASK] helped"}' "$base/v1/fill-mask"
echo
post() { curl -fsS -H 'content-type: application/json' -d "$2" "$base$1"; }
post /v1/embeddings '{"input": ["it worked", "it did not"], "model": "minilm"}' | "$PYTHON" -c '
import json, math, sys
data = json.load(sys.stdin)["data"]
norms = [math.sqrt(sum(x * x for x in item["embedding"])) for item in data]
print("embeddings: %d vectors of %d, norms %s" % (len(data), len(data[0]["embedding"]), norms))
assert len(data) == 2 and all(abs(n - 1) < 1e-3 for n in norms), "/v1/embeddings: not unit vectors"'
post /v1/embeddings '{"input": "it worked", "model": "minilm", "encoding_format": "base64"}' | "$PYTHON" -c '
import base64, json, sys
import numpy as np
vector = np.frombuffer(base64.b64decode(json.load(sys.stdin)["data"][0]["embedding"]), dtype="<f4")
assert abs(float(np.linalg.norm(vector)) - 1) < 1e-3, "/v1/embeddings base64: not a unit float32 vector"'
post /v1/embed '{"inputs": ["it worked"], "model": "minilm"}' | "$PYTHON" -c '
import json, sys
vectors = json.load(sys.stdin)
assert len(vectors) == 1 and len(vectors[0]) > 0, "/v1/embed: no vector"'
post /v1/explain '{"inputs": "it worked, it did not", "steps": 64, "attention": true}' | "$PYTHON" -c '
import json, sys
e = json.load(sys.stdin)["explanations"][0]
n, gap = len(e["tokens"]), e["logit"] - e["baseline_logit"]
print("explain: %s, %d tokens, logit gap %.4f, convergence delta %.5f" % (e["label"], n, gap, e["convergence_delta"]))
assert len(e["attributions"]) == n and all(len(h) == n and len(h[0]) == n for layer in e["attention"] for h in layer)
assert abs(e["convergence_delta"]) <= 0.05 * abs(gap) + 1e-3, "explain on cuda: attributions do not add up"'
curl -fsS "$base/v1/models" | "$PYTHON" -c '
import json, sys
served = [(m["name"], v) for m in json.load(sys.stdin)["models"] for v in m["versions"] if v["served"]]
for name, v in served:
    print(name, v["version"], v["backend"], v["device"])
assert served and all(v["device"].startswith("cuda:") for _, v in served), "/v1/models: not on cuda"
assert all(v["backend"] in ("fp16", "bf16", "fp32") for _, v in served), "auto on cuda: fp16, bf16 or fp32"'
curl -fsS "$base/metrics" | grep '^bertserve_model_info{' | grep -q 'device="cuda:0"' ||
    { echo "FAIL: bertserve_model_info has no device=\"cuda:0\""; exit 1; }
grep -q 'backend fp16 verified' "$work/serve.log" || { echo "FAIL: no fp16 verification in the log"; exit 1; }
grep '"device cuda' "$work/serve.log" | head -1
kill -TERM $server
wait $server || true
trap - EXIT

[ "${BENCH:-1}" = 0 ] && { echo "PASS: the CUDA path works (BENCH=0: no bench run; logs in $work)"; exit 0; }
"$PYTHON" -m bench.run --store "$store" --device cuda --quick --data synthetic --serve fp16 \
    --concurrency 1,64 --duration 3 --out "$work/results"
echo "PASS: the CUDA path works (logs and results in $work)"
