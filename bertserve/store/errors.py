"""Store failures: the CLI prints them as one line; the server answers 404/422 or refuses a version."""


class StoreError(Exception):
    """Anything wrong with the store: missing model, bad layout, refused operation."""


class UnknownModelError(StoreError):
    """A model, version or alias that the store does not have."""


class InvalidNameError(StoreError, ValueError):
    """A model or alias name the store cannot hold (it would be a path, or not a plain folder name). A
    ValueError too, so a settings field that checks one reports it like any other bad value."""


class IntegrityError(StoreError):
    """A version folder whose files do not match its manifest (names the file), or whose manifest cannot be
    read: that version is refused alone."""


class PromotionRefused(StoreError):
    """The promotion gate: the candidate's metric is worse than the version it would replace."""
