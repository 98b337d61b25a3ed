"""Process set-up: TensorFlow imported quietly in one place, JAX's backend probe kept quiet."""

import logging
import os
import sys

from absl import logging as absl_logging

from vdm_jax import runtime


def test_import_tensorflow_sets_the_log_level_and_is_cached(monkeypatch):
  monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
  runtime.import_tensorflow.cache_clear()
  tf = runtime.import_tensorflow()
  assert tf is sys.modules["tensorflow"]
  assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == runtime.TF_LOG_LEVEL == "3"
  assert runtime.import_tensorflow() is tf
  assert not tf.config.get_visible_devices("GPU")


def test_import_tensorflow_keeps_a_level_the_user_set(monkeypatch):
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
  runtime.import_tensorflow.cache_clear()
  runtime.import_tensorflow()
  assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


def test_setup_runtime_quiets_the_jax_backend_probe(monkeypatch):
  monkeypatch.setenv("VDM_COMPILATION_CACHE", "off")
  logger = logging.getLogger(runtime.JAX_BACKEND_LOGGER)
  handler = absl_logging.get_absl_handler()
  saved = (logger.level, absl_logging.get_verbosity(), list(handler.filters))
  try:
    runtime.setup_runtime(tcmalloc=False)
    runtime.setup_runtime(tcmalloc=False)
    assert logger.level == logging.WARNING
    assert not logger.isEnabledFor(logging.INFO)
    quiet_type = runtime._QuietLibraries  # pylint: disable=protected-access
    quiet = [f for f in handler.filters if isinstance(f, quiet_type)]
    assert len(quiet) == 1  # a second call adds no second filter
  finally:
    logger.setLevel(saved[0])
    absl_logging.set_verbosity(saved[1])
    handler.filters[:] = saved[2]
