"""bertserve benchmark: the in-process ceiling, the served numbers and every backend side by side, in one run.

    python -m bench.run --store model_store [--quick] [--device cuda]

1. Backends (in this process, on --device with the thread count of one server worker there): for each of
   fp32 / bf16 / int8 / onnx / onnx-int8 (cuda: fp32 / fp16 / bf16), load the served classifier
   (sentiment:production) with it and measure the *ceiling*: tokenize + pad + forward + decode of the same
   review texts the load test sends, batched at 1, 8 and the server's max_batch_size on that device, i.e. the
   server's own code path minus HTTP and queues. Then accuracy / macro-F1 of the classifier on drugsComTest
   and masked-LM top-5 of the mlm model on held-out reviews, relative to fp32.
2. Served: start `bertserve serve --device` (127.0.0.1, free port; once per --server-flags set), time process
   start -> /health 200, read every process's RSS from /proc, and drive /v1/classify with wrk (Lua body
   picker, one generator thread) at concurrency 1, 8, 64 for short (16-32 tokens) and long (~128 tokens)
   texts. Served sequences/s over the ceiling at the best batch size is the efficiency of everything around
   the model. The embedding model (--embedding, minilm) gets the same beside classify: its ceiling (tokenize
   + pad + forward + pool) on the same texts and its vectors' cosine to fp32's per backend, and /v1/embeddings
   driven on the same server.
3. Writes bench/results/<UTC timestamp>/results.json, results.md (the tables, also printed) and results.png.

Timings are ratios within one run on purpose: the machine is shared and noisy; absolute numbers drift.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bertserve.runtime.device import resolve_device

ROOT = Path(__file__).resolve().parent
ALL_BACKENDS = ("fp32", "bf16", "int8", "onnx", "onnx-int8")
GPU_BACKENDS = ("fp32", "fp16", "bf16")
MAX_ACCURACY_LOSS = 1.0  # points: a backend losing more is not "best"


# ---- inputs ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--quick", action="store_true", help="short smoke run (seconds, not minutes)")
    parser.add_argument("--classifier", default="sentiment:production", help="classification model ref")
    parser.add_argument("--mlm", default="mlm", help="masked-LM model ref for the top-5 check ('' skips)")
    parser.add_argument(
        "--embedding",
        default="minilm",
        help="embedding model ref measured beside classify ('' or absent from the store: skipped)",
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu | cuda | cuda:N: where the ceiling runs and the server serves"
    )
    parser.add_argument(
        "--backends",
        default=None,
        help=f"comma list to compare (cpu: {','.join(ALL_BACKENDS)}; cuda: {','.join(GPU_BACKENDS)})",
    )
    parser.add_argument(
        "--serve",
        default="fp32,best",
        help="backends to serve and load-test: names, 'best' (fastest within 1 point of fp32's accuracy) "
        "and/or 'auto' (the server's own choice); '' skips the load test",
    )
    parser.add_argument(
        "--server-flags",
        default="",
        help="';'-separated sets of extra `bertserve serve` flags, each set served and load-tested in turn "
        "(e.g. --server-flags=';--workers 1 --api-servers 2': the defaults, then the old layout)",
    )
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--duration", type=float, default=None, help="seconds per load point (8; quick 1.5)")
    parser.add_argument("--ceiling-seconds", type=float, default=None, help="per batch size (1.5; quick 0.3)")
    parser.add_argument(
        "--eval-limit", type=int, default=None, help="cap on evaluation texts (all; quick 48)"
    )
    parser.add_argument("--data", choices=("drugscom", "synthetic"), default="drugscom")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args(argv)
    args.duration = args.duration or (1.5 if args.quick else 8.0)
    args.ceiling_seconds = args.ceiling_seconds or (0.3 if args.quick else 1.5)
    args.eval_limit = args.eval_limit or (48 if args.quick else None)
    default = GPU_BACKENDS if args.device.startswith("cuda") else ALL_BACKENDS
    args.backends = [b for b in (args.backends or ",".join(default)).split(",") if b]
    if "fp32" not in args.backends:
        args.backends.insert(0, "fp32")
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.server_flags = [flags.split() for flags in args.server_flags.split(";")]
    return args


def load_texts(kind: str, tokenizer, labels: list[str], seed: int = 0):
    """(workload source texts, labelled test texts, test labels, held-out MLM texts)."""
    if kind == "drugscom":
        from bertserve.training import assets
        from bertserve.training.data import load_examples

        folder = assets.fetch(assets.REVIEWS)
        train = load_examples(folder / "drugsComTrain.tsv", "review", "rating")
        test = load_examples(folder / "drugsComTest.tsv", "review", "rating")
        return train.texts + test.texts, test.texts, [row[0] for row in test.labels], test.texts
    rng = random.Random(seed)
    words = [
        word
        for word in tokenizer.get_vocab()
        if word.isalpha() and word.isascii() and len(word) > 2 and word not in tokenizer.all_special_tokens
    ]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 140))) for _ in range(160)]
    return texts, texts[:60], [rng.choice(labels) for _ in texts[:60]], texts[60:120]


def cut_to_tokens(tokenizer, texts: list[str], low: int, high: int, seed: int = 0) -> list[str]:
    """Prefixes of `texts` whose token count (with [CLS]/[SEP]) lies in [low, high]; a random target each."""
    rng = random.Random(seed)
    out = []
    for text in texts:
        target = rng.randint(low, high)
        encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True, truncation=False)
        offsets = [span for span in encoded["offset_mapping"] if span[1] > 0]
        if len(offsets) + 2 < low:
            continue
        keep = offsets[: target - 2]
        candidate = text[: keep[-1][1]].strip()
        length = len(tokenizer(candidate)["input_ids"])
        if low <= length <= high:
            out.append(candidate)
    return out


# ---- in-process: ceiling and accuracy --------------------------------------------------------------------


def server_settings(device: str):
    """The settings a server started with `--device device` resolves to here: threads, batch limits, and the
    device itself (cuda -> cuda:0,...). A device this machine lacks ends the run with one line."""
    from bertserve.config import Settings
    from bertserve.runtime.device import DeviceUnavailable

    try:
        return Settings(device=device).resolved()
    except (DeviceUnavailable, ValueError) as exc:
        raise SystemExit(f"bench: {exc}") from None


def has_model(store_root: Path, ref: str) -> bool:
    from bertserve.store.layout import ModelStore
    from bertserve.store.resolve import resolve

    try:
        return bool(ref) and bool(resolve(ModelStore(store_root), ref))
    except Exception:  # not in the store: the measurement is skipped, and the report says so
        return False


def open_model(store_root: Path, ref: str, backend: str, device: str = "cpu"):
    from bertserve.runtime.loaded import LoadedModel
    from bertserve.store.layout import ModelStore
    from bertserve.store.resolve import resolve

    store = ModelStore(store_root)
    name, version = resolve(store, ref)
    started = time.perf_counter()
    model = LoadedModel(store.read_manifest(name, version), store.version_dir(name, version), backend, device)
    model.warm_up()
    return model, time.perf_counter() - started


def ceiling(model, texts: list[str], batch_size: int, seconds: float, limits: tuple[int, int]) -> dict:
    """Sequences/s of tokenize (one call per batch) + pad + forward + decode (classification) or pool
    (embedding), the server's path minus HTTP."""
    from bertserve.runtime.loaded import Prepared

    run = model.embed if model.task == "embedding" else model.classify

    def one(start: int) -> float:
        chunk = [texts[(start + i) % len(texts)] for i in range(batch_size)]
        began = time.perf_counter()
        run([Prepared(model, model.encode(chunk, True))], *limits)
        return time.perf_counter() - began

    one(0)  # warm (shape-dependent kernels, allocator)
    times, position, deadline = [], 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        times.append(one(position))
        position += batch_size
    total = sum(times)
    return {
        "batch_size": batch_size,
        "batches": len(times),
        "seq_per_s": round(len(times) * batch_size / total, 2),
        "batch_ms_p50": round(statistics.median(times) * 1000, 3),
    }


def evaluate_classifier(model, texts: list[str], truth: list[str], limits) -> dict:
    import numpy as np

    from bertserve.runtime.loaded import Prepared
    from bertserve.training.report import classification_metrics

    (answer,) = model.classify([Prepared(model, model.encode(texts, True))], *limits)
    predicted = [ranking[0]["label"] for ranking in answer]
    index = {label: i for i, label in enumerate(model.labels)}
    metrics = classification_metrics(
        model.labels, np.array([index[t] for t in truth]), np.array([index[p] for p in predicted])
    )
    return {
        "n": len(truth),
        "accuracy": round(100 * metrics["accuracy"], 2),
        "macro_f1": round(100 * metrics["macro_f1"], 2),
        "predicted": predicted,
    }


def mlm_probes(model, texts: list[str], seed: int = 0, max_tokens: int = 128) -> list[tuple[list, list, int]]:
    """One masked whole word per text (seeded): (ids with the mask, type ids, the original token id)."""
    tokenizer = model.tokenizer
    rng = random.Random(seed)
    probes = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=min(max_tokens, model.max_length))["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        candidates = [
            i
            for i, token in enumerate(tokens)
            if token.isalpha()
            and len(token) > 2
            and ids[i] not in model._drop_ids
            and not (i + 1 < len(tokens) and tokens[i + 1].startswith("##"))
        ]
        if candidates:
            position = rng.choice(candidates)
            masked = list(ids)
            masked[position] = model.mask_id
            probes.append((masked, [0] * len(ids), ids[position]))
    return probes


def evaluate_mlm(model, probes, limits) -> dict:
    from bertserve.runtime.loaded import Encoded, Prepared

    request = Prepared(model, [Encoded(ids, types) for ids, types, _ in probes], top_k=5)
    (answer,) = model.fill_mask([request], *limits)
    top5 = [[c["token"] for c in per_input[0]] for per_input in answer]
    hits5 = sum(original in tokens for (_, _, original), tokens in zip(probes, top5, strict=True))
    hits1 = sum(original == tokens[0] for (_, _, original), tokens in zip(probes, top5, strict=True))
    return {
        "n": len(probes),
        "top1": round(100 * hits1 / len(probes), 2),
        "top5": round(100 * hits5 / len(probes), 2),
        "predicted": [tokens[0] for tokens in top5],
    }


def measure_backends(args, workloads: dict, evaluation: dict, limits, batch_sizes: list[int]) -> dict:
    import torch

    from bertserve.runtime.backends import BackendUnavailable

    torch.set_num_threads(args.settings.torch_threads)
    results: dict = {}
    for backend in args.backends:
        row: dict = {"backend": backend}
        print(f"[bench] backend {backend}: loading", flush=True)
        try:
            model, load_s = open_model(args.store, args.classifier, backend, args.model_device)
        except BackendUnavailable as exc:
            results[backend] = {"backend": backend, "error": str(exc)}
            print(f"[bench]   unavailable: {exc}", flush=True)
            continue
        verification = getattr(model.backend, "verification", None)
        row["load_s"] = round(load_s, 2)
        row["verification"] = verification.__dict__ if verification else None
        row["ceiling"] = {}
        for workload, texts in workloads.items():
            points = [ceiling(model, texts, bs, args.ceiling_seconds, limits) for bs in batch_sizes]
            best = max(points, key=lambda p: p["seq_per_s"])
            row["ceiling"][workload] = {"points": points, "best": best}
        single = ceiling(model, workloads["short"], 1, args.ceiling_seconds, limits)
        row["single_forward_ms_p50"] = single["batch_ms_p50"]
        print(f"[bench]   ceiling short {row['ceiling']['short']['best']}", flush=True)
        row["classifier"] = evaluate_classifier(model, evaluation["texts"], evaluation["labels"], limits)
        del model
        gc.collect()
        if evaluation.get("mlm_probes") is not None:
            try:
                mlm, _ = open_model(args.store, args.mlm, backend, args.model_device)
            except BackendUnavailable as exc:  # the server could not load the mlm model with it either
                row["mlm"] = {"error": str(exc)}
                print(f"[bench]   mlm unavailable: {exc}", flush=True)
            else:
                row["mlm"] = evaluate_mlm(mlm, evaluation["mlm_probes"](mlm), limits)
                del mlm
                gc.collect()
        results[backend] = row
    reference = results.get("fp32")
    for row in results.values():
        if "error" in row or not reference or "error" in reference:
            continue
        for workload in workloads:
            base = reference["ceiling"][workload]["best"]["seq_per_s"]
            row["ceiling"][workload]["vs_fp32"] = round(
                row["ceiling"][workload]["best"]["seq_per_s"] / base, 2
            )
        clf, ref_clf = row["classifier"], reference["classifier"]
        clf["accuracy_delta"] = round(clf["accuracy"] - ref_clf["accuracy"], 2)
        clf["macro_f1_delta"] = round(clf["macro_f1"] - ref_clf["macro_f1"], 2)
        clf["agreement_with_fp32"] = round(
            100 * sum(a == b for a, b in zip(clf["predicted"], ref_clf["predicted"], strict=True)) / clf["n"],
            2,
        )
        if "top5" in row.get("mlm", {}) and "top5" in reference.get("mlm", {}):
            row["mlm"]["top5_delta"] = round(row["mlm"]["top5"] - reference["mlm"]["top5"], 2)
            row["mlm"]["top1_agreement_with_fp32"] = round(
                100
                * sum(
                    a == b
                    for a, b in zip(row["mlm"]["predicted"], reference["mlm"]["predicted"], strict=True)
                )
                / row["mlm"]["n"],
                2,
            )
    for row in results.values():
        row.get("classifier", {}).pop("predicted", None)
        row.get("mlm", {}).pop("predicted", None)
    return results


def embed_texts(model, texts: list[str], limits):
    """The vectors the server would answer (pooled, then normalized when the model says so)."""
    from bertserve.runtime.embed import normalize
    from bertserve.runtime.loaded import Prepared

    (vectors,) = model.embed([Prepared(model, model.encode(texts, True))], *limits)
    return normalize(vectors) if model.normalize else vectors


def measure_embeddings(args, workloads: dict, limits, batch_sizes: list[int]) -> dict:
    """Per backend: the embedding model's in-process ceiling on the same workloads as the classifier's, and
    the cosine of its vectors to fp32's on the long texts."""
    import torch

    from bertserve.runtime.backends import BackendUnavailable

    results: dict = {}
    compared = workloads["long"][: args.eval_limit]
    reference = None
    for backend in args.backends:
        print(f"[bench] embedding {args.embedding} on {backend}: loading", flush=True)
        try:
            model, load_s = open_model(args.store, args.embedding, backend, args.model_device)
        except BackendUnavailable as exc:
            results[backend] = {"backend": backend, "error": str(exc)}
            continue
        verification = getattr(model.backend, "verification", None)
        row: dict = {"backend": backend, "load_s": round(load_s, 2), "ceiling": {}}
        row["probe_min_cosine"] = verification.min_cosine if verification else None
        vectors = embed_texts(model, compared, limits)
        reference = vectors if backend == "fp32" else reference
        cosine = torch.nn.functional.cosine_similarity(reference, vectors, dim=-1)
        row["cosine_to_fp32"] = {"min": round(cosine.min().item(), 6), "mean": round(cosine.mean().item(), 6)}
        for workload, texts in workloads.items():
            points = [ceiling(model, texts, bs, args.ceiling_seconds, limits) for bs in batch_sizes]
            row["ceiling"][workload] = {"points": points, "best": max(points, key=lambda p: p["seq_per_s"])}
        print(f"[bench]   ceiling short {row['ceiling']['short']['best']}", flush=True)
        results[backend] = row
        del model
        gc.collect()
    return results


def adjacent_ceiling(args, ref: str, backend: str, reference: dict, workloads: dict, limits):
    """A function measuring `backend`'s ceiling for model `ref` at the table's best batch size (and, for short
    texts at concurrency 1, a single forward) in this process; None when the backend was not in the table."""
    if "ceiling" not in reference:
        return None
    model, _ = open_model(args.store, ref, backend, args.model_device)

    def measure(workload: str, concurrency: int) -> dict:
        best = reference["ceiling"][workload]["best"]["batch_size"]
        texts = workloads[workload]
        measured = {"seq_per_s": ceiling(model, texts, best, args.ceiling_seconds, limits)["seq_per_s"]}
        if concurrency == 1 and workload == "short":
            measured["single_ms"] = ceiling(model, texts, 1, args.ceiling_seconds, limits)["batch_ms_p50"]
        return measured

    return measure


def best_backend(results: dict) -> str:
    """Fastest short-text ceiling among backends within MAX_ACCURACY_LOSS points of fp32 (accuracy, macro-F1,
    MLM top-5)."""
    eligible = []
    for name, row in results.items():
        if "error" in row or "error" in row.get("mlm", {}):
            continue
        clf = row["classifier"]
        losses = [-clf.get("accuracy_delta", 0.0), -clf.get("macro_f1_delta", 0.0)]
        if "mlm" in row:
            losses.append(-row["mlm"].get("top5_delta", 0.0))
        if max(losses) <= MAX_ACCURACY_LOSS:
            eligible.append((row["ceiling"]["short"]["best"]["seq_per_s"], name))
    return max(eligible)[1] if eligible else "fp32"


# ---- served: process, load generator ---------------------------------------------------------------------


def save_results(out_root: Path, kind: str, results: dict, table: str) -> Path:
    """<out_root>/<UTC timestamp>-<kind>/results.json and results.md; prints the table and where it went."""
    out = out_root / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{kind}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(table)
    print(table)
    print(f"[{kind}] results in {out}")
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def process_tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def describe_process(pid: int, root: int) -> dict | None:
    try:
        cmdline = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode(errors="replace")
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) if "VmRSS" in status else 0
    if pid == root:
        role = "main (supervisor)"
    elif "spawn_main" in cmdline:
        role = "inference worker"
    elif "resource_tracker" in cmdline:
        role = "resource tracker"
    else:
        role = "http server (uvicorn)"
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "pid": pid,
        "role": role,
        "rss_mb": round(rss_kb / 1024, 1),
        "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
        "started": int(stat[19]),
    }


def _manager_sockets() -> set[str]:
    """The inodes of multiprocessing Managers' listening sockets (unix sockets in a /tmp/pymp-* folder)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and "/pymp-" in fields[7]:
                inodes.add(fields[6])
    return inodes


def _holds(pid: int, inodes: set[str]) -> bool:
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return True
    return False


def snapshot(root: int) -> list[dict]:
    """The server's processes. A forked child with the main process's command line is an HTTP process,
    unless it serves a multiprocessing Manager's socket: LitServe's mp.Manager (the start-up status, in
    checkouts that still start one; before the rebuilt engine it carried every request). It inherits the
    service port's socket too, so listening tells nothing."""
    processes = [p for p in (describe_process(pid, root) for pid in process_tree(root)) if p]
    managers = _manager_sockets()
    for process in processes:
        if process["role"] == "http server (uvicorn)" and _holds(process["pid"], managers):
            process["role"] = "LitServe's mp.Manager"
    return processes


@contextlib.contextmanager
def served(
    store: Path,
    backend: str,
    log_dir: Path,
    device: str = "cpu",
    flags: list[str] | None = None,
    cwd: Path | None = None,
):
    """`bertserve serve` on `store` (from the checkout `cwd`, default: this one) until the block ends."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTSERVE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["BERTSERVE_DRAIN_SECONDS"] = "1"
    log = log_dir / f"server-{backend}-{port}.log"
    command = [sys.executable, "-m", "bertserve.cli", "serve", "--store", str(store), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--backend", backend, "--device", device, "--log-level", "warning"]
    command += flags or []
    started = time.monotonic()
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=cwd
        )
    base = f"http://127.0.0.1:{port}"
    try:
        while http_get(f"{base}/health")[0] != 200:
            if process.poll() is not None:
                raise RuntimeError(f"server exited {process.returncode}: {log.read_text()[-3000:]}")
            if time.monotonic() - started > 600:
                raise RuntimeError(f"server not healthy after 600 s: {log.read_text()[-3000:]}")
            time.sleep(0.05)
        info = {"startup_s": round(time.monotonic() - started, 2), "pid": process.pid, "base": base}
        # what answers the task endpoints, as /v1/models says (not the explain workers' float32 copies)
        _, body = http_get(f"{base}/v1/models")
        served = [v for m in json.loads(body)["models"] for v in m["versions"] if v["served"]]
        info["backends_loaded"] = sorted({version["backend"] for version in served})
        yield info
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def find_wrk(mode: str) -> str | None:
    if mode == "python":
        return None
    found = shutil.which("wrk")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get") and mode in ("auto", "wrk"):
        print("[bench] installing wrk (apt-get install wrk)", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True, check=False)
        found = shutil.which("wrk")
    if found is None and mode == "wrk":
        raise SystemExit("wrk not found and could not be installed")
    return found


def require_wrk(program: str) -> str:
    """wrk's path, or exit saying `program` needs it."""
    wrk = find_wrk("wrk")
    if wrk is None:
        raise SystemExit(f"{program} needs wrk (apt-get install wrk)")
    return wrk


def run_wrk(wrk: str, base: str, path: str, bodies: Path, concurrency: int, seconds: float) -> dict:
    script = ROOT / "wrk_bodies.lua"
    command = [wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s"]
    command += ["-s", str(script), f"{base}{path}", "--", str(bodies), path]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(raw[k] for k in raw if k.startswith("errors_"))
    return {
        "requests": raw["requests"],
        "seconds": raw["duration_us"] / 1e6,
        "errors": errors,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "generator_cpu_s": round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 2),
    }


def run_python_generator(base: str, path: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    """Fallback when wrk is missing: closed-loop asyncio + httpx (costs the server more CPU than wrk)."""
    import httpx

    async def main() -> dict:
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + seconds
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

            async def user(offset: int) -> None:
                nonlocal errors
                index = offset
                while time.perf_counter() < deadline:
                    body = bodies[index % len(bodies)]
                    index += 1
                    began = time.perf_counter()
                    response = await client.post(
                        path, content=body, headers={"content-type": "application/json"}
                    )
                    latencies.append(time.perf_counter() - began)
                    errors += response.status_code != 200

            began = time.perf_counter()
            await asyncio.gather(*(user(i * 7919) for i in range(concurrency)))
            elapsed = time.perf_counter() - began
        latencies.sort()

        def pct(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0.0

        return {
            "requests": len(latencies),
            "seconds": elapsed,
            "errors": errors,
            "p50_ms": pct(0.5),
            "p90_ms": pct(0.9),
            "p99_ms": pct(0.99),
        }

    before = time.process_time()
    result = asyncio.run(main())
    result["generator_cpu_s"] = round(time.process_time() - before, 2)
    return result


def generate(
    wrk: str | None, base: str, path: str, body_file: Path, concurrency: int, seconds: float
) -> dict:
    """One closed-loop load point: wrk when available, else the Python generator on the same bodies."""
    if wrk:
        return run_wrk(wrk, base, path, body_file, concurrency, seconds)
    bodies = [line.encode() for line in body_file.read_text().splitlines() if line]
    return run_python_generator(base, path, bodies, concurrency, seconds)


def wait_until_idle(root: int, timeout: float = 60.0) -> None:
    """Until the server's processes use (almost) no CPU for 0.5 s: its queue is drained."""
    deadline = time.monotonic() + timeout
    before = sum(p["cpu_s"] for p in snapshot(root))
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(p["cpu_s"] for p in snapshot(root))
        if now - before < 0.05:
            return
        before = now


@dataclass(frozen=True)
class Route:
    """An endpoint a served run drives: its path, the request body for one text, and `adjacent(workload,
    concurrency)`, which measures the in-process ceiling again right after each point (None: not measured)."""

    endpoint: str
    path: str
    body: Callable[[str], dict]
    adjacent: Callable[[str, int], dict] | None = None


def load_test(
    args, backend: str, flags: list[str], workloads: dict, scratch: Path, wrk: str | None, routes: list[Route]
) -> dict:
    """Drive each route of the backend served with extra `flags` at each concurrency; the in-process ceiling
    is measured again right after each point (the server idle), as the machine's speed drifts."""
    out: dict = {"backend": backend, "flags": " ".join(flags), "points": []}
    # the models measured are the server's defaults (it refuses a default it does not serve)
    defaults = ["--default-embedding-model", args.embedding] if has_model(args.store, args.embedding) else []
    with served(args.store, backend, scratch, args.device, [*defaults, *flags]) as info:
        out.update({k: v for k, v in info.items() if k != "base"})
        out["processes"] = [{k: p[k] for k in ("pid", "role", "rss_mb")} for p in snapshot(info["pid"])]
        for route, (workload, texts) in ((r, w) for r in routes for w in workloads.items()):
            body_file = scratch / f"bodies-{route.endpoint}-{workload}.txt"
            body_file.write_text("".join(json.dumps(route.body(text)) + "\n" for text in texts))
            for concurrency in args.concurrency:
                load = (wrk, info["base"], route.path, body_file, concurrency)
                generate(*load, min(1.0, args.duration / 2))  # warm-up
                cpu_before = {p["pid"]: (p["role"], p["cpu_s"]) for p in snapshot(info["pid"])}
                point = generate(*load, args.duration)
                cpu: dict[str, float] = {}
                for process in snapshot(info["pid"]):
                    role, was = cpu_before.get(process["pid"], (process["role"], 0.0))
                    cpu[role] = round(cpu.get(role, 0.0) + process["cpu_s"] - was, 2)
                rps = point["requests"] / point["seconds"]
                point.update(
                    endpoint=route.endpoint,
                    workload=workload,
                    concurrency=concurrency,
                    req_per_s=round(rps, 2),
                    seq_per_s=round(rps, 2),  # one input per request
                    server_cpu_s=cpu,
                )
                for key in ("p50_ms", "p90_ms", "p99_ms"):
                    point[key] = round(point[key], 2)
                if route.adjacent is not None:
                    wait_until_idle(info["pid"])  # the generator stops with requests still queued
                    point["adjacent"] = route.adjacent(workload, concurrency)
                out["points"].append(point)
                print(
                    f"[bench]   served {backend} {out['flags']} {route.endpoint} {workload} c={concurrency}: "
                    f"{point['req_per_s']} req/s, "
                    f"p50 {point['p50_ms']} ms, errors {point['errors']}",
                    flush=True,
                )
        out["processes_after"] = [{k: p[k] for k in ("pid", "role", "rss_mb")} for p in snapshot(info["pid"])]
    return out


# ---- report ----------------------------------------------------------------------------------------------


def machine(gpus: tuple[int, ...] = ()) -> dict:
    import torch

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from bertserve.runtime.cpu import cpu_flags
    from bertserve.runtime.device import usable_cpus

    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")) or "vnni" in f or "bf16" in f)
    versions = {"torch": torch.__version__}
    with contextlib.suppress(ImportError):
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "simd_flags": flags,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "usable_cpus": usable_cpus(),
        "gpus": [torch.cuda.get_device_name(index) for index in gpus],
        "python": sys.version.split()[0],
        **versions,
    }


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def cores(point: dict) -> str:
    """CPU the server's processes used during a load point, in cores (CPU seconds / wall seconds)."""
    cpu = point.get("server_cpu_s", {})
    roles = (
        "http server (uvicorn)",
        "LitServe's mp.Manager",
        "main (supervisor)",
        "inference worker",
    )
    return " / ".join(f"{cpu.get(role, 0.0) / point['seconds']:.2f}" for role in roles)


def sizing(results: dict) -> str:
    s = results["settings"]
    return (
        f"{s['workers']} worker(s) x {s['torch_threads']} threads, {s['api_servers']} HTTP process(es), "
        f"batches <= {s['max_batch_size']} / {s['max_batch_tokens']} tokens"
    )


def markdown(results: dict) -> str:
    lines = [f"# bertserve benchmark {results['timestamp']}", ""]
    m = results["machine"]
    gpus = f", GPU {' + '.join(m['gpus'])}" if m.get("gpus") else ""
    lines.append(
        f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd_flags']) or 'no AVX'}), "
        f"{m['memory_gb']} GB{gpus}; torch {m['torch']}, onnxruntime {m.get('onnxruntime', '-')}; "
        f"device {results['device']}, {results['threads']} threads per worker (as a server worker). "
        f"Command: `{results['command']}`"
    )
    lines += ["", f"Classifier `{results['classifier']}`, masked LM `{results['mlm'] or '-'}`; workloads: "]
    for name, w in results["workloads"].items():
        lines[-1] += f"{name} = {w['texts']} texts of {w['tokens_min']}-{w['tokens_max']} tokens "
        lines[-1] += f"(mean {w['tokens_mean']}); "
    lines += [
        "",
        "## Backends (in-process ceiling: tokenize + pad + forward + decode, best batch size)",
        "",
        "| backend | short seq/s | x fp32 | long seq/s | x fp32 | 1 forward ms | accuracy | Δ pts | "
        "macro-F1 | Δ pts | MLM top-5 | Δ pts | RMS diff/std | load s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["backends"].items():
        if "error" in row:
            lines.append(f"| {name} | unavailable: {row['error'][:80]} |" + " |" * 12)
            continue
        c, clf, mlm = row["ceiling"], row["classifier"], row.get("mlm", {})
        ver = row.get("verification") or {}
        lines.append(
            f"| {name} | {fmt(c['short']['best']['seq_per_s'])} (bs {c['short']['best']['batch_size']}) | "
            f"{fmt(c['short'].get('vs_fp32'), 2)} | {fmt(c['long']['best']['seq_per_s'])} "
            f"(bs {c['long']['best']['batch_size']}) | {fmt(c['long'].get('vs_fp32'), 2)} | "
            f"{fmt(row['single_forward_ms_p50'], 2)} | {fmt(clf['accuracy'], 2)} | "
            f"{fmt(clf.get('accuracy_delta'), 2)} | {fmt(clf['macro_f1'], 2)} | "
            f"{fmt(clf.get('macro_f1_delta'), 2)} | {fmt(mlm.get('top5'), 2)} | "
            f"{fmt(mlm.get('top5_delta'), 2)} | "
            f"{fmt(ver.get('relative'), 3)} | {fmt(row['load_s'], 1)} |"
        )
    lines += ["", f"Best backend within {MAX_ACCURACY_LOSS:g} point of fp32: **{results['best_backend']}**; "]
    lines[-1] += f"`auto` on this machine resolves to **{results['auto_backend']}**."
    lines += embeddings_markdown(results)
    if results.get("served"):
        lines += [
            "",
            "## Served (`bertserve serve`, load generator: " + results["generator"] + ")",
            "",
            "Ceiling: the in-process ceiling at the best batch size, measured again right after each point; "
            "p50 / 1 forward: against a single-text forward measured then too. Flags: added to "
            f"`bertserve serve --device {results['device']}` (none: the sizing defaults, {sizing(results)}).",
            "",
            "| backend | flags | endpoint | workload | c | req/s | seq/s | p50 ms | p90 ms | p99 ms "
            "| ceiling seq/s | served/ceiling | p50 / 1 forward | errors "
            "| CPU cores: http / queue mgr / main / workers |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in results["served"]:
            for p in run["points"]:
                lines.append(
                    f"| {run['backend']} | {run['flags'] or '-'} | {p['endpoint']} | {p['workload']} | "
                    f"{p['concurrency']} | "
                    f"{fmt(p['req_per_s'])} | "
                    f"{fmt(p['seq_per_s'])} | {fmt(p['p50_ms'], 2)} | {fmt(p['p90_ms'], 2)} | "
                    f"{fmt(p['p99_ms'], 2)} | {fmt(p.get('ceiling_seq_per_s'))} | "
                    f"{fmt(p.get('served_vs_ceiling'), 2)} | {fmt(p.get('p50_vs_single_forward'), 2)} | "
                    f"{p['errors']} | {cores(p)} |"
                )
        lines += [
            "",
            "| backend | flags | start-up to /health 200 s | RSS MB per process |",
            "|---|---|---|---|",
        ]
        for run in results["served"]:
            rss = ", ".join(f"{p['role']} {p['rss_mb']:.0f}" for p in run.get("processes_after", []))
            lines.append(
                f"| {run['backend']} (loaded: {', '.join(run['backends_loaded'])}) | {run['flags'] or '-'} | "
                f"{run['startup_s']} | {rss} |"
            )
    return "\n".join(lines) + "\n"


def embeddings_markdown(results: dict) -> list[str]:
    if not results.get("embedding"):
        return ["", "Embeddings: skipped (no embedding model given or in the store)."]
    lines = [
        "",
        f"## Embeddings (`{results['embedding']}`, in-process ceiling: tokenize + pad + forward + pool, "
        "same texts)",
        "",
        "| backend | short seq/s | x fp32 | long seq/s | x fp32 | cosine to fp32, long texts: least / mean "
        "| load s |",
        "|---|---|---|---|---|---|---|",
    ]
    reference = results["embeddings"].get("fp32", {}).get("ceiling")
    for name, row in results["embeddings"].items():
        if "error" in row:
            lines.append(f"| {name} | unavailable: {row['error'][:80]} |" + " |" * 5)
            continue
        cells = []
        for workload in ("short", "long"):
            best = row["ceiling"][workload]["best"]
            ratio = best["seq_per_s"] / reference[workload]["best"]["seq_per_s"] if reference else None
            cells += [f"{fmt(best['seq_per_s'])} (bs {best['batch_size']})", fmt(ratio, 2)]
        cosine = row["cosine_to_fp32"]
        lines.append(
            f"| {name} | {' | '.join(cells)} | {fmt(cosine['min'], 6)} / {fmt(cosine['mean'], 6)} | "
            f"{fmt(row['load_s'], 1)} |"
        )
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = [(n, r) for n, r in results["backends"].items() if "error" not in r]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [n for n, _ in backends]
    for offset, workload in enumerate(("short", "long")):
        values = [r["ceiling"][workload]["best"]["seq_per_s"] for _, r in backends]
        xs = [i + offset * 0.4 for i in range(len(names))]
        axes[0].bar(xs, values, width=0.4, label=f"{workload} texts")
    axes[0].set_xticks([i + 0.2 for i in range(len(names))], names)
    axes[0].set_ylabel("sequences/s (ceiling, best batch)")
    axes[0].set_title("Backends, in-process ceiling")
    axes[0].legend()
    for run in results.get("served", []):
        for workload, style in (("short", "-o"), ("long", "--s")):
            points = [p for p in run["points"] if p["workload"] == workload and p["endpoint"] == "classify"]
            if points:
                axes[1].plot(
                    [p["concurrency"] for p in points],
                    [p["seq_per_s"] for p in points],
                    style,
                    label=f"{run['backend']} {run['flags']} {workload} served",
                )
                ceiling_value = points[-1].get("ceiling_seq_per_s")
                if ceiling_value:
                    axes[1].axhline(ceiling_value, linestyle=":", linewidth=0.8, color="grey")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("concurrent connections")
    axes[1].set_ylabel("sequences/s")
    axes[1].set_title("Served (dotted: ceilings)")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---- main ------------------------------------------------------------------------------------------------


def relate_to_ceiling(run: dict, references: dict[str, dict]) -> None:
    """Served over the ceiling measured right after each point (the table's, from minutes earlier, is kept
    for reference): the machine's speed drifts by tens of percent. `references`: endpoint -> table row."""
    for point in (p for p in run["points"] if "adjacent" in p):
        measured = point.pop("adjacent")
        reference = references[point["endpoint"]]
        point["ceiling_seq_per_s"] = measured["seq_per_s"]
        point["table_ceiling_seq_per_s"] = reference["ceiling"][point["workload"]]["best"]["seq_per_s"]
        point["served_vs_ceiling"] = round(point["seq_per_s"] / measured["seq_per_s"], 3)
        if "single_ms" in measured:
            point["single_forward_ms"] = measured["single_ms"]
            point["p50_vs_single_forward"] = round(point["p50_ms"] / measured["single_ms"], 2)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    settings = args.settings = server_settings(args.device)  # before any model loads: a missing GPU ends here
    args.device = settings.device
    gpus = resolve_device(settings.device).gpus
    args.model_device = f"cuda:{gpus[0]}" if gpus else "cpu"  # the in-process ceiling: the first GPU's
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's quantizer advice, exporter tracer notes
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per backend and model
    from bertserve.runtime.backends import resolve_backend_name

    limits = (settings.max_batch_size, settings.max_batch_tokens)
    batch_sizes = sorted({1, min(8, settings.max_batch_size), settings.max_batch_size})
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / stamp
    out.mkdir(parents=True, exist_ok=True)

    model, _ = open_model(args.store, args.classifier, "fp32", args.model_device)
    tokenizer, labels, longest = model.tokenizer, model.labels, model.max_length
    del model
    sources, test_texts, test_labels, mlm_texts = load_texts(args.data, tokenizer, labels)
    long_max = min(128, longest)  # ~128 tokens, or the model's limit when smaller (tiny test models: 64)
    workloads = {
        "short": cut_to_tokens(tokenizer, sources, 16, 32),
        "long": cut_to_tokens(tokenizer, sources, long_max - 8, long_max),
    }
    limit = args.eval_limit
    evaluation: dict = {"texts": test_texts[:limit], "labels": test_labels[:limit]}
    if args.mlm:
        evaluation["mlm_probes"] = lambda mlm: mlm_probes(mlm, mlm_texts[:limit])
    results: dict = {
        "timestamp": stamp,
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(gpus),
        "device": settings.device,
        "threads": settings.torch_threads,
        "settings": {
            name: getattr(settings, name)
            for name in (
                "workers",
                "torch_threads",
                "api_servers",
                "max_batch_size",
                "max_batch_tokens",
                "batch_timeout",
            )
        },
        "classifier": args.classifier,
        "mlm": args.mlm,
        "data": args.data,
        "workloads": {},
    }
    for name, texts in workloads.items():
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        results["workloads"][name] = {
            "texts": len(texts),
            "tokens_min": min(lengths),
            "tokens_max": max(lengths),
            "tokens_mean": round(sum(lengths) / len(lengths), 1),
        }

    results["backends"] = measure_backends(args, workloads, evaluation, limits, batch_sizes)
    results["best_backend"] = best_backend(results["backends"])
    accelerator = "cuda" if gpus else "cpu"
    results["auto_backend"] = resolve_backend_name("auto", accelerator)

    serve = []
    for item in (s for s in args.serve.split(",") if s):
        name = results["best_backend"] if item == "best" else item
        if name not in serve:
            serve.append(name)
    results["embedding"] = args.embedding if has_model(args.store, args.embedding) else ""
    results["embeddings"] = {}
    if results["embedding"]:
        results["embeddings"] = measure_embeddings(args, workloads, limits, batch_sizes)
    results["served"] = []
    if serve:
        wrk = find_wrk(args.generator)
        results["generator"] = "wrk -t1 (Lua body picker)" if wrk else "python asyncio+httpx (wrk missing)"
        with tempfile.TemporaryDirectory(prefix="bertserve-bench-") as scratch:
            for backend in serve:
                resolved = resolve_backend_name(backend, accelerator)
                references = {"classify": results["backends"].get(resolved, {})}
                routes = [
                    Route(
                        "classify",
                        "/v1/classify",
                        lambda text: {"inputs": [text]},
                        adjacent_ceiling(
                            args, args.classifier, resolved, references["classify"], workloads, limits
                        ),
                    )
                ]
                if results["embedding"]:
                    references["embeddings"] = results["embeddings"].get(resolved, {})
                    routes.append(
                        Route(
                            "embeddings",
                            "/v1/embeddings",
                            lambda text: {"input": [text], "model": args.embedding},
                            adjacent_ceiling(
                                args, args.embedding, resolved, references["embeddings"], workloads, limits
                            ),
                        )
                    )
                for flags in args.server_flags:
                    print(f"[bench] serving {backend} {' '.join(flags)}", flush=True)
                    run = load_test(args, backend, flags, workloads, Path(scratch), wrk, routes)
                    relate_to_ceiling(run, references)
                    results["served"].append(run)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out / "results.md").write_text(table)
    plot(results, out / "results.png")
    print(table)
    print(f"[bench] wrote {out}/results.json, results.md, results.png")
    return out


if __name__ == "__main__":
    main()
