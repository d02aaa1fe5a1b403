"""bertserve: BERT classification and fill-mask over HTTP, served from a versioned model store."""

__version__ = "0.1.0"
