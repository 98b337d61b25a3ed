"""moving_digits: Moving-MNIST-style videos from scikit-learn's digits.

1-2 handwritten digits (scikit-learn's bundled `load_digits`, 8x8, upsampled to
24x24) bounce inside a 64x64 frame for 20 frames; the frames are the per-pixel
maximum of the digits (as in Moving MNIST). 'label' is the class of the first
digit; 'num_digits' says how many there are. Train and test draw from disjoint
digit images and use different seeds.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

SIZE = 64
DIGIT_SIZE = 24
NUM_FRAMES = 20
NUM_TRAIN = 2048
NUM_TEST = 256
NUM_TRAIN_DIGIT_IMAGES = 1400  # images [0, 1400) train, [1400, 1797) test


def load_upsampled_digits() -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [N, 24, 24], labels int [N]) from load_digits."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = []
  for im in digits.images:  # [8, 8] in [0, 16]
    pil = Image.fromarray((im * (255.0 / 16.0)).astype(np.uint8))
    images.append(np.asarray(pil.resize((DIGIT_SIZE, DIGIT_SIZE),
                                        Image.BILINEAR)))
  return np.stack(images), digits.target.astype(np.int64)


def _trajectory(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Top-left corners [T] (x, y) of a digit bouncing inside the frame."""
  hi = SIZE - DIGIT_SIZE
  pos = rng.uniform(0, hi, size=2)
  angle = rng.uniform(0, 2 * np.pi)
  vel = rng.uniform(1.5, 3.5) * np.array([np.cos(angle), np.sin(angle)])
  out = np.zeros((NUM_FRAMES, 2))
  for t in range(NUM_FRAMES):
    out[t] = pos
    pos = pos + vel
    for d in range(2):
      if pos[d] < 0 or pos[d] > hi:
        vel[d] = -vel[d]
        pos[d] = np.clip(pos[d], 0, hi)
  corners = np.round(out).astype(np.int64)
  return corners[:, 0], corners[:, 1]


def render_video(rng: np.random.Generator, images: np.ndarray,
                 labels: np.ndarray) -> tuple[np.ndarray, int, int]:
  """Returns (video uint8 [20, 64, 64, 1], first label, number of digits)."""
  num_digits = int(rng.integers(1, 3))
  idx = rng.integers(len(images), size=num_digits)
  video = np.zeros((NUM_FRAMES, SIZE, SIZE), np.uint8)
  for i in idx:
    xs, ys = _trajectory(rng)
    for t in range(NUM_FRAMES):
      patch = video[t, ys[t]:ys[t] + DIGIT_SIZE, xs[t]:xs[t] + DIGIT_SIZE]
      np.maximum(patch, images[i], out=patch)
  return video[..., None], int(labels[idx[0]]), num_digits


class MovingDigits(tfds.core.GeneratorBasedBuilder):
  """Moving-MNIST-style sequences from scikit-learn's handwritten digits."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Tensor(
                shape=(NUM_FRAMES, SIZE, SIZE, 1), dtype=np.uint8,
                encoding="zlib"),
            "label": tfds.features.ClassLabel(num_classes=10),
            "num_digits": np.int32,
        }),
        supervised_keys=("video", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    images, labels = load_upsampled_digits()
    n = NUM_TRAIN_DIGIT_IMAGES
    return {
        "train": self._generate_examples(images[:n], labels[:n], NUM_TRAIN, 0),
        "test": self._generate_examples(images[n:], labels[n:], NUM_TEST, 1),
    }

  def _generate_examples(self, images, labels, num: int, seed: int):
    for i in range(num):
      rng = np.random.default_rng([seed, i])
      video, label, num_digits = render_video(rng, images, labels)
      yield i, {"video": video, "label": label, "num_digits": num_digits}
