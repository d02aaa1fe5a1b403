"""The docs' picture of /ui: serve a store, explain a text in headless Chromium (the browser tests' code
path), save a PNG of the page.

    python -m tests.browser.screenshot --store model_store --out docs/ui-explain.png
"""

from __future__ import annotations

import argparse
import base64
import tempfile
from pathlib import Path

from tests.browser.browser import chromium, open_ui, run_tool
from tests.server_process import running_server

TEXT = "It made my headaches worse and I could not sleep."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="model store to serve (not modified)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--text", default=TEXT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        # running_server keeps its log and TMPDIR beside the store: serve a link from a scratch folder
        store = Path(scratch) / "model_store"
        store.symlink_to(args.store.resolve())
        with (
            running_server(
                store, env={"BERTSERVE_BACKEND": "auto", "BERTSERVE_EXPLAIN_WORKERS": "1"}
            ) as base,
            chromium() as page,
        ):
            open_ui(page, base)
            run_tool(page, "explain", args.text)
            width = page.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]["width"]
            height = page.execute_script(
                "return document.querySelector('main').getBoundingClientRect().bottom"
            )
            clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 0.8}
            shot = page.execute_cdp_cmd(
                "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
            )
    args.out.write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
