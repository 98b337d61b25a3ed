"""TFDS builders embedded in the package (built offline, in seconds)."""
