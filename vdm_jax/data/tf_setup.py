"""Imports TensorFlow the way this package needs it: quiet, CPU only."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

tf.config.set_visible_devices([], "GPU")

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

tfds.disable_progress_bar()

__all__ = ["tf", "tfds"]
