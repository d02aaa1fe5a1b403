"""The versioned model store: folders on disk are the source of truth; no torch needed to read them."""
