"""Process set-up for the entry scripts: quiet TensorFlow, logging, a fast malloc on CPU.

This module is the base of the package's import graph: it imports nothing from vdm_jax.

XLA on CPU allocates large temporaries every step; under glibc malloc that becomes a page-fault
storm. The entry scripts re-execute themselves once with a faster allocator preloaded
(LD_PRELOAD): mimalloc, which `pip install -r requirements.txt` brings (the cmeel-mimalloc wheel,
no root needed), or tcmalloc where the system has it (Debian: libtcmalloc-minimal4).
VDM_ALLOCATOR=auto|mimalloc|tcmalloc|glibc chooses (glibc: preload nothing); benchmarks/allocators.py
measures them against each other.
"""

from __future__ import annotations

import functools
import glob
import logging as std_logging
import os
import sys
import sysconfig
from types import ModuleType

from absl import logging

# TF_CPP_MIN_LOG_LEVEL for TensorFlow's C++ logs: 3 drops INFO, WARNING and ERROR lines (CUDA and
# oneDNN start-up chatter that users read as faults); Python-side errors still raise.
TF_LOG_LEVEL = "3"
# JAX logs "Unable to initialize backend 'tpu': ..." at INFO through this logger whenever it probes
# for accelerators; absl's INFO verbosity would show it on every CPU run.
JAX_BACKEND_LOGGER = "jax._src.xla_bridge"

_TCMALLOC_GLOBS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so*",
                   "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so*",
                   "/usr/lib/libtcmalloc_minimal.so*", "/usr/local/lib/libtcmalloc_minimal.so*")
# Where the cmeel-mimalloc wheel puts the library, relative to site-packages.
_MIMALLOC_GLOB = os.path.join("cmeel.prefix", "lib", "libmimalloc.so*")
ALLOCATORS = ("auto", "mimalloc", "tcmalloc", "glibc")
# auto's order of preference (benchmarks/RESULTS.md, "Allocators").
_AUTO_ORDER = ("tcmalloc", "mimalloc")
_REEXEC_MARK = "VDM_ALLOCATOR_SET"


def find_tcmalloc() -> str | None:
  """The system's libtcmalloc_minimal, or None."""
  for pattern in _TCMALLOC_GLOBS:
    found = sorted(glob.glob(pattern))
    if found:
      return found[0]
  return None


def find_mimalloc() -> str | None:
  """libmimalloc from the cmeel-mimalloc wheel in this environment's site-packages, or None."""
  for key in ("platlib", "purelib"):
    found = sorted(glob.glob(os.path.join(sysconfig.get_paths()[key], _MIMALLOC_GLOB)))
    if found:
      return found[0]
  return None


def find_allocator(name: str) -> tuple[str, str | None]:
  """(allocator name, library path or None for glibc) for a VDM_ALLOCATOR value.

  Raises:
    ValueError: an unknown name.
  """
  if name not in ALLOCATORS:
    raise ValueError(f"VDM_ALLOCATOR={name!r}; choose one of {ALLOCATORS}")
  finders = {"tcmalloc": find_tcmalloc, "mimalloc": find_mimalloc}
  for candidate in (_AUTO_ORDER if name == "auto" else (name,)):
    if candidate in finders:
      path = finders[candidate]()
      if path is not None:
        return candidate, path
  return "glibc", None


def preloaded_allocator() -> str:
  """Which allocator LD_PRELOAD holds: 'tcmalloc', 'mimalloc' or 'glibc'."""
  preload = os.environ.get("LD_PRELOAD", "")
  return next((name for name in ("tcmalloc", "mimalloc") if name in preload), "glibc")


def maybe_reexec_with_allocator() -> None:
  """Re-executes this process once with the chosen allocator preloaded (VDM_ALLOCATOR, default
  auto); nothing when it is already loaded, when glibc is chosen, or with VDM_NO_TCMALLOC=1."""
  if os.environ.get(_REEXEC_MARK) or os.environ.get("VDM_NO_TCMALLOC"):
    return
  name, lib = find_allocator(os.environ.get("VDM_ALLOCATOR", "auto"))
  if lib is None or preloaded_allocator() != "glibc":
    return
  env = dict(os.environ, LD_PRELOAD=(lib + " " + os.environ.get("LD_PRELOAD", "")).strip(),
             **{_REEXEC_MARK: name})
  os.execve(sys.executable, [sys.executable] + sys.argv, env)


def enable_compilation_cache() -> None:
  """JAX's persistent compilation cache: a resumed run or a sample.py call skips the compile
  (minutes on a small CPU). Directory: $VDM_COMPILATION_CACHE, default ~/.cache/vdm_jax/xla;
  VDM_COMPILATION_CACHE=off disables it."""
  path = os.environ.get("VDM_COMPILATION_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "vdm_jax", "xla"))
  if path.lower() in ("off", "none", "0", ""):
    return
  import jax
  if jax.config.jax_compilation_cache_dir:  # set by the user (JAX_COMPILATION_CACHE_DIR)
    return
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def quiet_tensorflow_logs() -> None:
  """Sets TF_CPP_MIN_LOG_LEVEL to TF_LOG_LEVEL unless the user set it (before TF is imported).

  Also turns TensorFlow's oneDNN graph rewrites off unless the user chose (TF_ENABLE_ONEDNN_OPTS):
  TensorFlow only reads files and writes summaries here, and its import otherwise prints an
  'oneDNN custom operations are on' line that TF_CPP_MIN_LOG_LEVEL does not silence.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@functools.cache
def import_tensorflow() -> ModuleType:
  """Imports TensorFlow quietly and keeps it off every GPU (JAX owns the accelerators).

  The one place the package imports TensorFlow (the data pipeline, TFDS and the metric writer go
  through it). Cached: later calls return the same module.

  Returns:
    The tensorflow module.
  """
  quiet_tensorflow_logs()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # Already initialised by someone else: visibility can no longer change.
    pass
  return tf


class _QuietLibraries(std_logging.Filter):
  """Drops INFO records of Orbax (a dozen lines per save) from the absl log."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def setup_runtime(allocator: bool = True) -> None:
  """Process set-up for an entry script: quiet logs, a fast malloc, JAX's compilation cache.

  Args:
    allocator: re-execute with a faster malloc preloaded (maybe_reexec_with_allocator).
  """
  quiet_tensorflow_logs()
  if allocator:
    maybe_reexec_with_allocator()
  logging.set_verbosity(logging.INFO)
  std_logging.getLogger(JAX_BACKEND_LOGGER).setLevel(std_logging.WARNING)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
  enable_compilation_cache()
  if preloaded_allocator() == "glibc" and os.environ.get("VDM_ALLOCATOR") != "glibc":
    logging.info("no faster malloc preloaded: pip install cmeel-mimalloc (requirements.txt) or "
                 "apt-get install libtcmalloc-minimal4 for faster CPU steps")
  else:
    logging.info("malloc: %s (VDM_ALLOCATOR=auto|mimalloc|tcmalloc|glibc chooses)", preloaded_allocator())
