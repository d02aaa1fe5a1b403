"""Write monitoring/rules.yml into k8s/components/prometheus-operator/prometheusrule.yaml (a PrometheusRule).

    python scripts/sync-prometheusrule.py          # regenerate
    python scripts/sync-prometheusrule.py --check  # exit 1 when the PrometheusRule is stale (CI)

monitoring/rules.yml is the single source (promtool checks and unit-tests it); the PrometheusRule carries
its `groups:` block verbatim, comments included, indented under `spec:`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "monitoring" / "rules.yml"
TARGET = REPO / "k8s" / "components" / "prometheus-operator" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from monitoring/rules.yml by scripts/sync-prometheusrule.py: edit that file, then rerun it.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: bertserve
  labels:
    app.kubernetes.io/name: bertserve
    # what kube-prometheus-stack's ruleSelector matches (as the ServiceMonitor's): docs/deploy.md#prometheus
    release: kube-prometheus-stack
spec:
"""


def render() -> str:
    lines = RULES.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = ["  " + line if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=f"Write {RULES.relative_to(REPO)} into {TARGET.relative_to(REPO)} (a PrometheusRule)."
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when the PrometheusRule is stale (CI)"
    )
    text = render()
    if parser.parse_args(argv).check:
        if not TARGET.is_file() or TARGET.read_text() != text:
            print(
                f"{TARGET.relative_to(REPO)} is stale: run python scripts/sync-prometheusrule.py",
                file=sys.stderr,
            )
            return 1
        print(f"{TARGET.relative_to(REPO)} matches {RULES.relative_to(REPO)}")
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
