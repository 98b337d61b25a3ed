"""Claim 1 at 32x32, where the papers say the colour shift appears (4x the pixels of the default).

    python scripts/study.py --study studies/parameterisation_32.py

The rows of studies/parameterisation.py on 8-frame 32x32 moving_shapes clips (the default model at
image_size 32: spatial attention stays at the 8x8 level), 3,000 steps.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from parameterisation import get_study as _base  # noqa: E402


def get_study():
  study = _base()
  study.update(name="parameterisation_32",
               claim=study["claim"] + " At 32x32.",
               overrides={"data.resolution": 32, "model.image_size": 32})
  return study
