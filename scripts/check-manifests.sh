#!/usr/bin/env bash
# Render every kustomization and check it offline: Kubernetes OpenAPI schemas, cross-object policies,
# the checkov policy scanner (exceptions are annotated, with their reason, on the objects themselves), and
# the PrometheusRule being in sync with monitoring/rules.yml. Also promtool on the rules.
#   scripts/check-manifests.sh            (after scripts/install-ci-tools.sh)
# The same checks run under pytest in tests/deploy/ (make test); this script prints their full output.
set -euo pipefail
cd "$(dirname "$0")/.."
CI_TOOLS=${BERTSERVE_CI_TOOLS:-.cache/ci-tools}
if [[ -n ${CHECK_MANIFESTS_OUT:-} ]]; then
  OUT=$CHECK_MANIFESTS_OUT && mkdir -p "$OUT"   # keep the rendered manifests and checkov's report there
else
  OUT=$(mktemp -d) && trap 'rm -rf "$OUT"' EXIT
fi
TARGETS=(k8s/overlays/dev k8s/overlays/prod k8s/overlays/gpu k8s/store-admin)

kubectl=$(command -v kubectl || echo "$CI_TOOLS/bin/kubectl")
for tool in "$kubectl" promtool "$CI_TOOLS/bin/checkov" "$CI_TOOLS/bin/python"; do
  command -v "$tool" > /dev/null || { echo "check-manifests: $tool missing: run scripts/install-ci-tools.sh" >&2; exit 2; }
done

echo "== kubectl kustomize"
files=()
for target in "${TARGETS[@]}"; do
  file=$OUT/$(echo "$target" | tr / _).yaml
  "$kubectl" kustomize "$target" > "$file"
  printf '  %-22s %s\n' "$target" "$(grep -E '^kind: ' "$file" | sed 's/kind: //' | sort | uniq -c | awk '{printf "%s%s ", $2, ($1 > 1 ? "x" $1 : "")}')"
  files+=("$file")
done

echo "== schemas and cross-object policies"
"$CI_TOOLS/bin/python" scripts/validate_manifests.py "${files[@]}"

echo "== checkov (kubernetes framework)"
"$CI_TOOLS/bin/checkov" --framework kubernetes --skip-download -o json -f "${files[@]}" > "$OUT/checkov.json" \
  2> "$OUT/checkov.log" || true  # judged from the report below (exit 1 on failed checks, also on a crash)
"$CI_TOOLS/bin/python" - "$OUT/checkov.json" <<'PY'
import json, sys
try:
    report = json.load(open(sys.argv[1]))
except ValueError:
    sys.exit("check-manifests: checkov wrote no report (see checkov.log next to it)")
summary, results = report["summary"], report["results"]
print(f"  passed {summary['passed']}, failed {summary['failed']}, skipped {summary['skipped']}, "
      f"parsing errors {summary['parsing_errors']} ({summary['resource_count']} resources)")
for check in results["skipped_checks"]:
    reason = check["check_result"].get("suppress_comment", "")
    print(f"  skipped {check['check_id']} on {check['resource']}: {reason}")
for check in results["failed_checks"]:
    print(f"  FAILED {check['check_id']} {check['check_name']} on {check['resource']} ({check['file_path']})")
if results["failed_checks"] or summary["parsing_errors"] or not summary["passed"]:
    sys.exit("check-manifests: checkov found problems")
PY

echo "== PrometheusRule <- monitoring/rules.yml"
"$CI_TOOLS/bin/python" scripts/sync-prometheusrule.py --check

echo "== promtool"
promtool check rules monitoring/rules.yml
(cd monitoring && promtool test rules rules.test.yml)
promtool check config monitoring/prometheus-test.yml > /dev/null && echo "  monitoring/prometheus-test.yml valid"

echo "check-manifests: OK"
