"""Writes tests/golden/samples.npz: fixed-seed samples of the micro training run of test_sampling.

    python tests/golden/make_golden.py   (from the repository root)

Run it only when a change is meant to alter samples (say why in the commit); the test
test_sampling.test_fixed_seed_samples_equal_the_pinned_ones compares against the file.
"""

import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.getcwd())

import numpy as np  # noqa: E402

from tests import test_sampling  # noqa: E402
from vdm_jax.train.loop import train_and_evaluate  # noqa: E402


def main() -> None:
  root = tempfile.mkdtemp()
  workdir = os.path.join(root, "run")
  train_and_evaluate(test_sampling.micro_config(os.path.join(root, "tfds")), workdir)
  out = test_sampling.golden_samples(workdir)
  np.savez_compressed(test_sampling.GOLDEN, **out)
  print({k: v.shape for k, v in out.items()})


if __name__ == "__main__":
  main()
