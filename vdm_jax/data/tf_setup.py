"""TensorFlow and TFDS the way this package needs them: quiet, CPU only (see runtime)."""

from __future__ import annotations

from vdm_jax.runtime import import_tensorflow

tf = import_tensorflow()  # before TFDS, which imports TensorFlow itself

import tensorflow_datasets as tfds  # noqa: E402  (after TensorFlow is quiet)

tfds.disable_progress_bar()

__all__ = ["tf", "tfds"]
