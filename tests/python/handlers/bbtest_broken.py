"""A handler module that fails while being imported."""

BROKEN = 1 / 0
