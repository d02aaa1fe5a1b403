"""Tiny random BERT checkpoints in real Hugging Face folders, for fast tests that still use the real loaders.

The weights use a large initializer_range so the outputs are far from uniform: a parity test against
transformers can then actually fail when our code computes something different.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
)

WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "is",
    "was",
    "it",
    "that",
    "this",
    "for",
    "on",
    "with",
    "as",
    "at",
    "by",
    "from",
    "be",
    "are",
    "were",
    "not",
    "no",
    "but",
    "or",
    "i",
    "you",
    "he",
    "she",
    "we",
    "they",
    "my",
    "your",
    "his",
    "her",
    "our",
    "their",
    "me",
    "him",
    "us",
    "them",
    "what",
    "which",
    "who",
    "when",
    "where",
    "why",
    "how",
    "good",
    "bad",
    "great",
    "terrible",
    "okay",
    "fine",
    "awful",
    "excellent",
    "love",
    "hate",
    "like",
    "dislike",
    "happy",
    "sad",
    "angry",
    "calm",
    "drug",
    "pill",
    "tablet",
    "dose",
    "doctor",
    "pain",
    "headache",
    "nausea",
    "sleep",
    "side",
    "effects",
    "worked",
    "work",
    "works",
    "helped",
    "help",
    "took",
    "take",
    "taking",
    "day",
    "days",
    "week",
    "weeks",
    "month",
    "months",
    "year",
    "years",
    "time",
    "first",
    "after",
    "before",
    "never",
    "always",
    "capital",
    "france",
    "paris",
    "london",
    "city",
    "country",
    "river",
    "big",
    "small",
    "new",
    "old",
    "very",
    "really",
    "much",
    "more",
    "most",
    "less",
    "movie",
    "film",
    "book",
    "story",
    "music",
    "food",
    "water",
    "coffee",
    "tea",
    "dog",
    "cat",
    "house",
    "car",
    "road",
    "tree",
    "sun",
    "moon",
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PUNCT = list(".,!?;:'\"()-")
SUFFIXES = ["##s", "##ed", "##ing", "##ly", "##er", "##est"]


def write_tokenizer(folder: Path) -> BertTokenizerFast:
    """A real WordPiece tokenizer (fast, uncased) over a small English vocabulary."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    # no duplicates: a repeated line gets an id past len(tokenizer), outside the model's embeddings
    vocab = list(dict.fromkeys(SPECIAL + PUNCT + sorted(set(WORDS)) + SUFFIXES + letters))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=64)
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_config(vocab_size: int, **overrides) -> BertConfig:
    params = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        initializer_range=0.5,
    )
    params.update(overrides)
    return BertConfig(**params)


def build_classifier(
    folder: Path,
    labels: tuple[str, ...] = ("negative", "neutral", "positive"),
    multi_label: bool = False,
    seed: int = 0,
    initializer_range: float = 0.5,
) -> Path:
    """Save a tiny BertForSequenceClassification folder with id2label set. The default initializer_range
    gives decisive outputs; training tests start from a gentler 0.1, which a few epochs can train."""
    tokenizer = write_tokenizer(folder)
    torch.manual_seed(seed)
    config = tiny_config(
        len(tokenizer),
        initializer_range=initializer_range,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    return folder


def build_masked_lm(folder: Path, seed: int = 0) -> Path:
    """Save a tiny BertForMaskedLM folder (decoder tied to the word embeddings, as BERT's)."""
    tokenizer = write_tokenizer(folder)
    torch.manual_seed(seed)
    model = BertForMaskedLM(tiny_config(len(tokenizer))).eval()
    model.save_pretrained(folder)
    return folder


def build_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """Save a tiny cross-encoder as sentence-transformers' CrossEncoder saves rerankers: a
    BertForSequenceClassification with one output (no task given: the store detects it)."""
    tokenizer = write_tokenizer(folder)
    torch.manual_seed(seed)
    config = tiny_config(len(tokenizer), num_labels=1)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    return folder


def build_sentence_encoder(
    folder: Path,
    pooling: str = "mean",
    normalize: bool = True,
    max_seq_length: int = 48,
    seed: int = 0,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
) -> Path:
    """Save a tiny BertModel laid out as a sentence-transformers folder: modules.json, 1_Pooling/config.json
    (the older boolean keys, as all-MiniLM-L6-v2 has them) and sentence_bert_config.json; with `prompts`,
    also config_sentence_transformers.json naming them (and the default prompt)."""
    tokenizer = write_tokenizer(folder)
    torch.manual_seed(seed)
    config = tiny_config(len(tokenizer))
    BertModel(config, add_pooling_layer=False).eval().save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    modes = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens", "lasttoken": "lasttoken"}
    pooling_config = {"word_embedding_dimension": config.hidden_size}
    pooling_config.update({f"pooling_mode_{key}": mode == pooling for mode, key in modes.items()})
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config, indent=2))
    settings = {"max_seq_length": max_seq_length, "do_lower_case": False}
    (folder / "sentence_bert_config.json").write_text(json.dumps(settings))
    if prompts is not None:
        config_st = {
            "prompts": prompts,
            "default_prompt_name": default_prompt_name,
            "similarity_fn_name": "cosine",
        }
        (folder / "config_sentence_transformers.json").write_text(json.dumps(config_st, indent=2))
    return folder
