"""Build a tiny but real model store (random 2-layer BERTs, real tokenizer and import code) for deploy tests.

    python scripts/make_tiny_store.py STORE_DIR

publishes `sentiment` (negative/neutral/positive) and `mlm` (fill-mask) as version 1 each, with the
`production` alias on both, so `bertserve serve --store STORE_DIR` serves both default endpoints in seconds.
Used by scripts/image-test.sh (served from inside the container image) and tests/deploy/test_prometheus.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LABELS = ("negative", "neutral", "positive")


def make_tiny_store(root: Path) -> Path:
    from bertserve.store.layout import ModelStore
    from bertserve.store.publish import import_hf_folder, set_alias
    from tests.tiny_models import build_classifier, build_masked_lm

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    store = ModelStore(root)
    with tempfile.TemporaryDirectory(prefix="bertserve-tiny-hf-") as scratch:
        classifier = build_classifier(Path(scratch) / "classifier", labels=LABELS, seed=0)
        masked_lm = build_masked_lm(Path(scratch) / "mlm", seed=0)
        for name, folder in (("sentiment", classifier), ("mlm", masked_lm)):
            if not store.versions(name):
                manifest = import_hf_folder(store, folder, name)
                set_alias(store, name, "production", manifest.version)
    return root


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Build a tiny but real model store: `sentiment` (negative/neutral/positive) and `mlm` "
        "(fill-mask), random 2-layer BERTs with a real tokenizer, version 1 each, alias production."
    )
    parser.add_argument("store", type=Path, help="the store folder (created; models already there are kept)")
    root = make_tiny_store(parser.parse_args(argv).store)
    print(f"tiny store ready: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
