"""Render the Grafana dashboard's panels to a PNG from real data, without Grafana.

    .venv/bin/python scripts/dashboard-snapshot.py [--out monitoring/dashboard.png] [--seconds 90]

Builds a tiny model store, serves it with `bertserve serve` on 127.0.0.1, starts a real Prometheus
(monitoring/prometheus-test.yml) scraping it, sends a bounded, varied load (classify and fill-mask of
different lengths and batch sizes, some unknown-model 404s) for --seconds, then runs every query of
monitoring/grafana-dashboard.json through Prometheus' query_range API and draws each panel where its
gridPos puts it. Needs matplotlib (the train extra) and Debian's prometheus. Everything stays on loopback.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import httpx  # noqa: E402
import yaml  # noqa: E402

WORDS = [
    "the",
    "drug",
    "worked",
    "great",
    "terrible",
    "side",
    "effects",
    "pain",
    "sleep",
    "headache",
    "helped",
    "doctor",
    "dose",
    "week",
]


def drive_load(base: str, seconds: float) -> dict[str, int]:
    rng = random.Random(0)
    sent = {"classify": 0, "fill-mask": 0, "404": 0}
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base, timeout=30) as client:
        while time.monotonic() < deadline:
            phase = (time.monotonic() % 30) / 30  # a slow wave of request sizes
            batch = 1 + int(rng.random() * (2 + 14 * phase))
            texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 40))) for _ in range(batch)]
            if rng.random() < 0.03:
                client.post("/v1/classify", json={"inputs": texts[:1], "model": "missing"})
                sent["404"] += 1
            elif rng.random() < 0.25:
                masked = [f"{t} [MASK] ." for t in texts[:4]]
                client.post("/v1/fill-mask", json={"inputs": masked, "top_k": 3}).raise_for_status()
                sent["fill-mask"] += 1
            else:
                client.post("/v1/classify", json={"inputs": texts}).raise_for_status()
                sent["classify"] += 1
            time.sleep(rng.random() * 0.05)
    return sent


def render(prometheus: str, start: float, end: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads((REPO / "monitoring" / "grafana-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    figure = plt.figure(figsize=(24, rows * 0.55))
    figure.suptitle(
        f"{dashboard['title']}: monitoring/grafana-dashboard.json queries on a live Prometheus, "
        f"{int(end - start)} s of load (scripts/dashboard-snapshot.py)",
        y=0.93,
    )
    grid = figure.add_gridspec(rows, 24, hspace=2.5, wspace=1.2)
    step = max(1, int((end - start) / 120))
    for panel in panels:
        pos = panel["gridPos"]
        axes = figure.add_subplot(grid[pos["y"] : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]])
        axes.set_title(panel["title"], fontsize=9)
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "30s")
            expr = expr.replace("$namespace", ".*").replace("$job", ".*")
            params = {"query": expr, "start": start, "end": end, "step": step}
            result = httpx.get(f"{prometheus}/api/v1/query_range", params=params, timeout=30).json()
            for series in result["data"]["result"]:
                legend = target["legendFormat"]
                for key, value in series["metric"].items():
                    legend = legend.replace("{{" + key + "}}", value)
                times = [float(t) - start for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                if panel["type"] == "stat":
                    axes.text(0.5, 0.45, f"{values[-1]:.3g}", ha="center", va="center", fontsize=22)
                    axes.set_axis_off()
                else:
                    axes.plot(times, values, label=legend, linewidth=1)
        if panel["type"] == "stat" and not axes.texts:
            axes.text(0.5, 0.45, "no data", ha="center", va="center", fontsize=12, color="grey")
            axes.set_axis_off()
        if panel["type"] != "stat":
            axes.tick_params(labelsize=7)
            axes.set_xlabel("seconds", fontsize=7)
            axes.set_ylabel(panel["fieldConfig"]["defaults"].get("unit", ""), fontsize=7)
            if axes.lines:
                axes.legend(fontsize=6, loc="upper left")
            else:
                axes.text(0.5, 0.5, "no data", ha="center", transform=axes.transAxes)
    figure.savefig(out, dpi=70, bbox_inches="tight")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "monitoring" / "dashboard.png")
    parser.add_argument("--seconds", type=float, default=100)
    args = parser.parse_args()
    from make_tiny_store import make_tiny_store

    from tests.server_process import free_port, running_server

    with tempfile.TemporaryDirectory(prefix="bertserve-dashboard-") as scratch:
        folder = Path(scratch)
        store = make_tiny_store(folder / "store")
        with running_server(store, "--workers", "1", env={"BERTSERVE_BATCH_TIMEOUT": "0.01"}) as base:
            config = yaml.safe_load((REPO / "monitoring" / "prometheus-test.yml").read_text())
            config["rule_files"] = []
            config["scrape_configs"][0]["static_configs"][0]["targets"] = [base.removeprefix("http://")]
            (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
            port = free_port()
            prometheus = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                url = f"http://127.0.0.1:{port}"
                for _ in range(60):
                    try:
                        if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.5)
                start = time.time()
                sent = drive_load(base, args.seconds)
                time.sleep(3)
                # The first 30 s only fill the rate windows: plot what follows.
                render(url, start + 30, time.time(), args.out)
            finally:
                prometheus.terminate()
                prometheus.wait(10)
    print(f"sent {sent}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
