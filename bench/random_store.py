"""A store shaped like the default one, with random weights, for benchmarks where no weights can be fetched.

    python -m bench.random_store STORE [--tokenizer FOLDER] [--shape minilm|tiny]

publishes `sentiment` (3 labels, all-MiniLM-L6-v2's shape: 6 layers, hidden 384, 12 heads) with the
`production` alias, and `minilm` (task embedding: the same encoder shape, mean pooling, normalized), using the
real WordPiece tokenizer from FOLDER (default: the encoder asset's folder, when its files are in the cache).
Throughput depends on the shape and the token counts, not on the weights, so
`bench.run --data drugscom` and `bench.peers` measure on it what they would on the trained model; the accuracy
columns mean nothing. `--shape tiny` (1 layer, hidden 32, the same tokenizer) makes a classifier whose
forward costs next to nothing: what bench.overhead serves to measure the serving path's own cost.
This is how the GPU tables in docs/performance.md were made on a machine with no copy of the weights.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

LABELS = ("negative", "neutral", "positive")
SHAPES = {
    "minilm": {
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
    },
    "tiny": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def default_tokenizer_folder() -> Path:
    from bertserve.training import assets

    return assets.cache_dir() / f"{assets.ENCODER.name}-{assets.ENCODER.version}"


def build(store_root: Path, tokenizer_folder: Path, shape: str = "minilm") -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    from bertserve.store.layout import ModelStore
    from bertserve.store.publish import import_hf_folder, set_alias

    store = ModelStore(store_root)
    models = (("sentiment", "classification"), ("minilm", "embedding"))
    for name, task in models if shape == "minilm" else models[:1]:
        if store.versions(name):
            print(f"[random-store] {store_root} already holds {name}")
            continue
        with tempfile.TemporaryDirectory(prefix="bertserve-random-") as scratch:
            folder = Path(scratch) / name
            folder.mkdir()
            for file in TOKENIZER_FILES:
                if (tokenizer_folder / file).exists():
                    shutil.copy(tokenizer_folder / file, folder / file)
            tokenizer = BertTokenizerFast.from_pretrained(folder)
            config = BertConfig(
                vocab_size=len(tokenizer),
                **SHAPES[shape],
                max_position_embeddings=512,
                num_labels=len(LABELS),
                id2label=dict(enumerate(LABELS)),
                label2id={label: i for i, label in enumerate(LABELS)},
            )
            torch.manual_seed(0)
            if task == "classification":
                model = BertForSequenceClassification(config)
            else:
                model = BertModel(config, add_pooling_layer=False)
            model.eval().save_pretrained(folder)
            manifest = import_hf_folder(store, folder, name, task=task, created_by="bench.random_store")
            set_alias(store, name, "production", manifest.version)
        print(f"[random-store] published {name}@{manifest.version} (random weights) in {store_root}")


def main(argv: list[str] | None = None) -> None:
    description = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.random_store", description=description)
    parser.add_argument("store", type=Path, help="store folder (created if missing)")
    parser.add_argument(
        "--tokenizer", type=Path, default=None, help="a BERT tokenizer's folder (default: the asset's)"
    )
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), default="minilm", help="encoder shape (default minilm)"
    )
    args = parser.parse_args(argv)
    args.store.mkdir(parents=True, exist_ok=True)
    build(args.store, args.tokenizer or default_tokenizer_folder(), args.shape)


if __name__ == "__main__":
    main()
