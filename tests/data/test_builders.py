"""The embedded datasets: content, determinism, disjoint splits."""

import numpy as np

from vdm_jax.data import registry
from vdm_jax.data.builders import moving_digits, moving_shapes


def test_moving_shapes_render_is_deterministic_and_constant_colour():
  a, la = moving_shapes.render_video(np.random.default_rng(7), 32, 20)
  b, lb = moving_shapes.render_video(np.random.default_rng(7), 32, 20)
  np.testing.assert_array_equal(a, b)
  assert la == lb and a.shape == (20, 32, 32, 3) and a.dtype == np.uint8
  colours = {tuple(c) for c in a.reshape(-1, 3)} - {(0, 0, 0)}
  assert len(colours) == 1  # one constant colour on a black background
  area = (a.max(-1) > 0).sum(axis=(1, 2))  # [T]
  assert area.min() > 0 and area.max() - area.min() <= 0.25 * area.max()
  centre = [np.argwhere(f.max(-1) > 0).mean(0) for f in a]
  assert np.linalg.norm(centre[-1] - centre[0]) > 1.0  # it moves


def test_moving_shapes_splits_disjoint_and_labels_cover_kinds(data_dir):
  train = registry.open_source("moving_shapes", "train", data_dir)
  test = registry.open_source("moving_shapes", "test", data_dir)
  spec = registry.get_spec("moving_shapes")
  def digest(ex):
    return registry.read_video(ex, spec).tobytes()
  train_set = {digest(train[i]) for i in range(0, len(train), 8)}
  assert not train_set & {digest(test[i]) for i in range(len(test))}
  labels = {registry.read_label(train[i], spec) for i in range(200)}
  assert labels == set(range(len(moving_shapes.SHAPE_NAMES)))


def test_moving_digits(data_dir):
  source = registry.open_source("moving_digits", "test", data_dir)
  spec = registry.get_spec("moving_digits")
  assert len(source) == moving_digits.NUM_TEST
  ex = source[0]
  video = registry.read_video(ex, spec)
  assert video.shape == (20, 64, 64, 1) and video.dtype == np.uint8
  assert 0 <= registry.read_label(ex, spec) < 10
  assert ex["num_digits"] in (1, 2) and video.max() > 100
  assert not np.array_equal(video[0], video[-1])
