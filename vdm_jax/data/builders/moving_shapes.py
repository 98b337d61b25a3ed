"""moving_shapes: one coloured shape bouncing at constant velocity.

Each video shows one shape (label = its kind) of constant colour and size on a
plain black background, moving at constant velocity and reflecting off the
borders. Constant colours and simple physics make temporal consistency and
colour drift measurable. Deterministic from a seed; train and test use
different seeds.

Config "speeds_32" (DataConfig name `moving_shapes_speeds`) draws each video's speed from two
values, slow or fast (SPEEDS x size per frame, equally likely), and stores the micro-conditioning
features of Stable Video Diffusion like `video_folder` does: 'fps' (NOMINAL_FPS: the rate samples
are written at) and 'motion' (`curation.motion_score`, pixels per second at 64 x 64). The other
configs' data is unchanged (their cached datasets and the golden tests depend on it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from vdm_jax.data import curation

SHAPE_NAMES = ("square", "circle", "triangle", "diamond", "cross")
PALETTE = np.array([
    [255, 64, 64], [64, 255, 64], [64, 96, 255], [255, 255, 64],
    [255, 64, 255], [64, 255, 255], [255, 160, 32], [240, 240, 240],
], dtype=np.uint8)  # [8, 3]
NUM_FRAMES = 20
SPEEDS = (0.02, 0.09)  # "speeds" configs: slow or fast, x size per frame
NOMINAL_FPS = 8.0      # "speeds" configs: the frame rate their 'fps' feature states


def _shape_mask(kind: int, dx: np.ndarray, dy: np.ndarray, r: float
                ) -> np.ndarray:
  """Boolean mask of a shape of half-size r, offsets dx, dy from its centre."""
  ax, ay = np.abs(dx), np.abs(dy)
  if kind == 0:  # square
    return (ax <= r) & (ay <= r)
  if kind == 1:  # circle
    return dx * dx + dy * dy <= r * r
  if kind == 2:  # triangle, apex up
    return (dy <= r) & (dy >= -r) & (ax <= (dy + r) / 2)
  if kind == 3:  # diamond
    return ax + ay <= r
  return ((ax <= r / 3) & (ay <= r)) | ((ay <= r / 3) & (ax <= r))  # cross


def _bounce(p0: float, v: float, lo: float, hi: float, steps: np.ndarray
            ) -> np.ndarray:
  """Positions of a point moving at constant speed, reflected into [lo, hi]."""
  span = hi - lo
  x = (p0 - lo + v * steps) % (2 * span)
  return lo + np.where(x > span, 2 * span - x, x)


def render_video(rng: np.random.Generator, size: int, num_frames: int,
                 speeds: tuple[float, ...] = ()) -> tuple[np.ndarray, int]:
  """Renders one video.

  Args:
    rng: numpy generator (consumed).
    size: frame height and width.
    num_frames: T.
    speeds: () draws the speed uniformly in [0.03, 0.08) x size per frame (the original configs);
      otherwise one of these (x size per frame), equally likely.

  Returns:
    (video uint8 [T, size, size, 3], label int in [0, len(SHAPE_NAMES))).
  """
  kind = int(rng.integers(len(SHAPE_NAMES)))
  colour = PALETTE[rng.integers(len(PALETTE))]
  r = rng.uniform(0.12, 0.22) * size
  speed = (rng.choice(speeds) if speeds else rng.uniform(0.03, 0.08)) * size
  angle = rng.uniform(0, 2 * np.pi)
  cx0, cy0 = rng.uniform(r, size - 1 - r, size=2)
  steps = np.arange(num_frames, dtype=np.float64)
  cx = _bounce(cx0, speed * np.cos(angle), r, size - 1 - r, steps)  # [T]
  cy = _bounce(cy0, speed * np.sin(angle), r, size - 1 - r, steps)  # [T]
  grid = np.arange(size, dtype=np.float64)
  dx = grid[None, None, :] - cx[:, None, None]  # [T, 1, W]
  dy = grid[None, :, None] - cy[:, None, None]  # [T, H, 1]
  mask = _shape_mask(kind, dx, dy, r)  # [T, H, W]
  video = np.where(mask[..., None], colour, np.uint8(0)).astype(np.uint8)
  return video, kind  # [T, H, W, 3]


@dataclasses.dataclass
class MovingShapesConfig(tfds.core.BuilderConfig):
  size: int = 32
  num_train: int = 4096
  num_test: int = 512
  speeds: tuple[float, ...] = ()  # () = uniform speeds, no fps/motion features


class MovingShapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes bouncing at constant velocity."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      MovingShapesConfig(name="32", size=32, num_train=4096, num_test=512),
      MovingShapesConfig(name="64", size=64, num_train=2048, num_test=256),
      MovingShapesConfig(name="speeds_32", size=32, num_train=4096, num_test=512, speeds=SPEEDS),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.size
    features = {
        "video": tfds.features.Tensor(shape=(NUM_FRAMES, s, s, 3), dtype=np.uint8, encoding="zlib"),
        "label": tfds.features.ClassLabel(names=SHAPE_NAMES),
    }
    if self.builder_config.speeds:
      features["fps"] = tfds.features.Scalar(np.float32, doc="frames per second (nominal)")
      features["motion"] = tfds.features.Scalar(np.float32, doc="motion score, pixels/s at 64x64")
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict(features),
        supervised_keys=("video", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    return {
        "train": self._generate_examples(cfg.num_train, seed=0),
        "test": self._generate_examples(cfg.num_test, seed=1),
    }

  def _generate_examples(self, num: int, seed: int):
    cfg = self.builder_config
    for i in range(num):
      rng = np.random.default_rng([seed, cfg.size, i])
      video, label = render_video(rng, cfg.size, NUM_FRAMES, cfg.speeds)
      example = {"video": video, "label": label}
      if cfg.speeds:
        example.update(fps=NOMINAL_FPS, motion=curation.motion_score(video, NOMINAL_FPS))
      yield i, example
