"""What `bertserve bootstrap` builds: the default store's models and alias. A module of its own, free of
torch, so that `bootstrap --help` names them from the list the bootstrap itself runs by."""

from __future__ import annotations

SENTIMENT, MLM, EMBEDDING, PRODUCTION = "sentiment", "mlm", "minilm", "production"

# Each model the bootstrap publishes, in the order its summary lists them, and what it builds of it.
BUILDS = {
    SENTIMENT: f"v1 frozen, v2 fine-tuned, the {PRODUCTION} alias through the promotion gate",
    MLM: "v1, the encoder after masked-LM training",
    EMBEDDING: "v1, the encoder itself as a sentence-embedding model (no training)",
}


def described() -> str:
    """The builds in one line, for --help."""
    return "; ".join(f"{name} {what}" for name, what in BUILDS.items())
