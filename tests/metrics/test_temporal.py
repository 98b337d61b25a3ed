"""Temporal metrics on moving_shapes clips: exact on hand-made videos, at the data's value on clean clips,
worse with the defect each one reads (and blind to the others), and wired into evaluation."""

import numpy as np
import pytest

from vdm_jax.data.builders.moving_shapes import render_video
from vdm_jax.metrics import temporal

SIZE, FRAMES = 32, 12


def _clips(num, seed, size=SIZE, frames=FRAMES):
  """uint8 [num, frames, size, size, 3] drawn by the moving_shapes builder's own renderer."""
  return np.stack([render_video(np.random.default_rng([seed, size, i]), size, frames)[0] for i in range(num)])


@pytest.fixture(scope="module")
def clips():
  return _clips(12, seed=0)


@pytest.fixture(scope="module")
def clean(clips):
  return temporal.mean_over_videos(temporal.video_stats(clips))


def _square(t_frames=6, size=16, colour_step=0.0):
  """One 4x4 square moving 1 px right per frame, its red channel rising by colour_step; float [-1, 1]."""
  video = np.full((1, t_frames, size, size, 3), -1.0, np.float32)
  for t in range(t_frames):
    video[0, t, 6:10, 4 + t:8 + t] = [-0.2 + 2 * colour_step * t, 0.6, 0.2]
  return video


def test_exact_values_on_a_hand_made_video():
  video = _square(colour_step=0.05)
  stats = temporal.video_stats(video)
  np.testing.assert_allclose(stats["object_colour_change"], [0.05], atol=1e-6)
  np.testing.assert_allclose(stats["object_size_change"], [0.0])
  np.testing.assert_allclose(stats["object_acceleration"], [0.0])  # constant velocity
  np.testing.assert_allclose(stats["object_count_instability"], [0.0])
  # colour_shift: the mean colour's red over frames 5 vs 0 (k = 1): 16 of 256 pixels moved by 0.25.
  np.testing.assert_allclose(stats["colour_shift"], [16 / 256 * 0.25], atol=1e-6)
  objects = temporal.find_objects(video)
  assert objects.counts.tolist() == [[1] * 6] and objects.area.tolist() == [16.0] * 6
  np.testing.assert_allclose(objects.centroid[:, 1], 5.5 + np.arange(6))
  extra = video.copy()
  extra[0, 2:4, 0:3, 12:15] = 1.0  # a second object in frames 2 and 3
  np.testing.assert_allclose(temporal.video_stats(extra)["object_count_instability"], [2 / 6])


def test_tracking_follows_positions_not_order():
  """Two objects of different colours pass each other, so their raster order swaps between frames 2 and
  3; matched by centroid (Hungarian), neither changes colour or speed."""
  video = np.zeros((1, 6, 24, 24, 3), np.uint8)
  for t in range(6):
    video[0, t, 6 + 2 * t:10 + 2 * t, 2:6] = [255, 0, 0]  # red moves down
    video[0, t, 16 - 2 * t:20 - 2 * t, 8:12] = [0, 0, 255]  # blue moves up, 6 px to the right
  objects = temporal.find_objects(video)
  np.testing.assert_allclose(objects.colour[[4, 6], 0], [1, 0])  # frame 2: red first; frame 3: blue
  stats = temporal.video_stats(video)
  np.testing.assert_allclose(stats["object_colour_change"], [0.0])
  np.testing.assert_allclose(stats["object_acceleration"], [0.0])


def test_a_bounce_off_the_wall_is_not_acceleration():
  """A square at constant speed reflecting off the right wall (as moving_shapes' shapes do)."""
  xs = [10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 26, 24]  # right edge reaches the wall (31) at t = 9
  video = np.zeros((1, len(xs), 32, 32, 3), np.uint8)
  for t, x in enumerate(xs):
    video[0, t, 14:18, x:x + 4] = [64, 255, 64]
  np.testing.assert_allclose(temporal.video_stats(video)["object_acceleration"], [0.0])
  video[0, 3] = np.roll(video[0, 3], 1, axis=1)  # one frame a pixel ahead, away from the walls
  # x: triples around t = 2, 3, 4 accelerate by 1, 2, 1 px; x kept for t = 1..6 (farther from the walls
  # than a frame's travel + 1.5 px), y (still) for all 10 triples: 4 px over 16 samples, / side 32.
  np.testing.assert_allclose(temporal.video_stats(video)["object_acceleration"], [4 / 16 / 32], rtol=1e-6)


def test_clean_clips_sit_at_the_data_value(clips, clean):
  reference = temporal.mean_over_videos(temporal.video_stats(_clips(12, seed=1)))
  assert clean["object_colour_change"] == 0.0 and clean["object_count_instability"] == 0.0
  for name in ("colour_shift", "object_size_change", "object_acceleration"):
    assert 0 < clean[name] < 1.6 * reference[name] and reference[name] < 1.6 * clean[name], name
  res = temporal.temporal_metrics(clips, _clips(12, seed=1))
  assert set(res) == {f"{n}_{s}" for n in temporal.TEMPORAL_METRICS for s in ("generated", "real", "ratio")}
  assert res["object_colour_change_ratio"] == 1.0  # both 0
  assert 0.6 < res["object_acceleration_ratio"] < 1.6
  float_stats = temporal.mean_over_videos(temporal.video_stats(clips.astype(np.float32) / 127.5 - 1.0))
  assert float_stats == pytest.approx(clean, rel=1e-4, abs=1e-6)


# corruption -> (metric it targets, growing strengths)
TARGETS = [
    ("tint", "colour_shift", (0.05, 0.1, 0.2)),
    ("tint", "object_colour_change", (0.05, 0.1, 0.2)),
    ("flicker", "object_colour_change", (0.05, 0.1, 0.2)),
    ("noise", "object_colour_change", (0.03, 0.06, 0.12)),
    ("dropout", "object_count_instability", (1 / FRAMES, 2 / FRAMES, 4 / FRAMES)),
    ("scale", "object_size_change", (0.05, 0.1, 0.2)),
    ("jitter", "object_acceleration", (1, 2, 3)),
]


@pytest.mark.parametrize("kind,metric,strengths", TARGETS, ids=[f"{k}-{m}" for k, m, _ in TARGETS])
def test_metric_grows_with_its_corruption(clips, clean, kind, metric, strengths):
  values = [temporal.mean_over_videos(temporal.video_stats(
      temporal.corrupt(clips, kind, s, np.random.default_rng(0))))[metric] for s in strengths]
  assert clean[metric] < values[0] < values[1] < values[2], (clean[metric], values)
  assert values[0] > clean[metric] + 1e-3, (clean[metric], values)


# corruption -> metrics it must leave (nearly) at their clean value.
BLIND = [
    ("jitter", 2, ("object_colour_change", "object_count_instability")),
    ("dropout", 0.25, ("object_colour_change", "object_size_change", "object_acceleration")),
    ("tint", 0.2, ("object_count_instability", "object_size_change", "object_acceleration")),
    ("flicker", 0.1, ("object_count_instability", "object_size_change", "object_acceleration")),
    ("scale", 0.2, ("object_colour_change", "object_count_instability")),
]


@pytest.mark.parametrize("kind,strength,metrics", BLIND, ids=[k for k, _, _ in BLIND])
def test_metrics_are_not_fooled_by_other_defects(clips, clean, kind, strength, metrics):
  stats = temporal.mean_over_videos(temporal.video_stats(
      temporal.corrupt(clips, kind, strength, np.random.default_rng(0))))
  for name in metrics:
    assert stats[name] == pytest.approx(clean[name], rel=0.1, abs=2e-3), name


def test_corrupt_keeps_dtype_and_rejects_unknown(clips):
  rng = np.random.default_rng(0)
  assert temporal.corrupt(clips, "noise", 0.1, rng).dtype == np.uint8
  as_float = clips.astype(np.float32) / 127.5 - 1.0
  out = temporal.corrupt(as_float, "tint", 0.0, rng)
  assert out.dtype == np.float32 and np.abs(out - as_float).max() < 1e-5
  with pytest.raises(ValueError, match="Unknown corruption"):
    temporal.corrupt(clips, "blur", 1.0, rng)
  with pytest.raises(ValueError, match="T >= 3"):
    temporal.video_stats(clips[:, :2])


def test_ratio_convention():
  assert temporal.ratio(0.2, 0.1) == pytest.approx(2.0)
  assert temporal.ratio(0.0, 0.0) == 1.0 and temporal.ratio(0.1, 0.0) == float("inf")
  assert np.isnan(temporal.ratio(float("nan"), 0.1))


def test_cache_extra_round_trip_through_json():
  import json  # noqa: PLC0415
  real = {"colour_shift": 0.01, "object_acceleration": float("nan")}
  stored = json.loads(json.dumps(temporal.cache_extra(real)))
  back = temporal.from_cache_extra(stored)
  assert back["colour_shift"] == 0.01 and np.isnan(back["object_acceleration"])
  assert temporal.from_cache_extra({**stored, "temporal_protocol": {"objects": "older"}}) is None
  assert temporal.from_cache_extra({"shape": [1]}) is None


def test_evaluate_reports_the_requested_temporal_metrics(tmp_path, clips):
  from vdm_jax import evaluation  # noqa: PLC0415  (pulls generation/; only this test needs it)
  from vdm_jax.data import DataConfig  # noqa: PLC0415
  generated = temporal.corrupt(clips, "tint", 0.2, np.random.default_rng(0))
  np.savez(tmp_path / "g.npz", videos=generated)
  real = _clips(6, seed=1)
  names = ("colour_shift", "object_colour_change")
  res = evaluation.evaluate(DataConfig(name="fake", num_frames=FRAMES, resolution=SIZE),
                            samples=str(tmp_path / "g.npz"), metrics=("colour_drift",) + names,
                            real_batches=iter([real[:4], real[4:].astype(np.float32) / 127.5 - 1.0]))
  metrics = res["metrics"]
  expected = temporal.temporal_metrics(generated, real)
  for name in names:
    for suffix in ("generated", "real", "ratio"):
      assert metrics[f"{name}_{suffix}"] == pytest.approx(expected[f"{name}_{suffix}"], rel=1e-5)
  assert metrics["colour_shift_ratio"] > 3 and "object_acceleration_ratio" not in metrics
  assert res["protocol"]["temporal"] == temporal.PROTOCOL and "colour_shift_ratio" in res["summary"]
  with pytest.raises(ValueError, match="Unknown metrics"):
    evaluation.validate_request(("object_wobble",), 4, FRAMES)
