"""Store failures: the CLI prints them as one line; the server answers 404/422 or refuses a version."""


class StoreError(Exception):
    """Anything wrong with the store: missing model, bad layout, refused operation."""


class UnknownModelError(StoreError):
    """A model, version or alias that the store does not have."""


class IntegrityError(StoreError):
    """A version folder whose files do not match its manifest (names the file)."""


class PromotionRefused(StoreError):
    """The promotion gate: the candidate's metric is worse than the version it would replace."""
