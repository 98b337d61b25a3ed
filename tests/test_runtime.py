"""Process set-up: TensorFlow imported quietly in one place, JAX's backend probe kept quiet, the
malloc chosen and preloaded once."""

import logging
import os
import subprocess
import sys

import pytest
from absl import logging as absl_logging

from vdm_jax import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    runtime.setup_runtime(allocator=False)
    runtime.setup_runtime(allocator=False)
    assert logger.level == logging.WARNING
    assert not logger.isEnabledFor(logging.INFO)
    quiet_type = runtime._QuietLibraries  # pylint: disable=protected-access
    quiet = [f for f in handler.filters if isinstance(f, quiet_type)]
    assert len(quiet) == 1  # a second call adds no second filter
  finally:
    logger.setLevel(saved[0])
    absl_logging.set_verbosity(saved[1])
    handler.filters[:] = saved[2]


def test_allocator_choice():
  assert runtime.find_allocator("glibc") == ("glibc", None)
  if runtime.find_mimalloc():  # requirements.txt installs it on Linux
    name, path = runtime.find_allocator("mimalloc")
    assert name == "mimalloc" and os.path.isfile(path)
  auto, _ = runtime.find_allocator("auto")
  assert auto in ("tcmalloc", "mimalloc", "glibc")
  with pytest.raises(ValueError, match="VDM_ALLOCATOR='jemalloc'"):
    runtime.find_allocator("jemalloc")


def test_entry_script_reexecutes_once_with_the_allocator(tmp_path):
  """setup_runtime re-executes the process with the library preloaded, exactly once."""
  script = tmp_path / "probe.py"
  script.write_text("import os\nfrom vdm_jax import runtime\nprint('start', flush=True)\n"
                    "runtime.setup_runtime()\nprint('LD_PRELOAD=' + os.environ.get('LD_PRELOAD', ''))\n")
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "VDM_ALLOCATOR_SET")}
  env.update(PYTHONPATH=REPO, VDM_ALLOCATOR="mimalloc", VDM_COMPILATION_CACHE="off")
  proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  _, lib = runtime.find_allocator("mimalloc")
  if lib is None:
    assert proc.stdout.count("start") == 1 and "LD_PRELOAD=\n" in proc.stdout
  else:
    assert proc.stdout.count("start") == 2  # the original process, then the re-executed one
    assert f"LD_PRELOAD={lib}" in proc.stdout
