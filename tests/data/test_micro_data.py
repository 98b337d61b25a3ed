"""The data side of micro-conditioning: moving_shapes_speeds' two speeds and its fps / motion
features, the batch columns, the training-set medians, and the config error for a dataset without
them. No dataset is built: sources are lists of examples."""

import dataclasses

import numpy as np
import pytest

import configs.default
from vdm_jax.config import ConfigError, ExperimentConfig, validate_experiment
from vdm_jax.data import curation, pipeline, registry
from vdm_jax.data.builders import moving_shapes
from vdm_jax.data.config import DataConfig, DatasetInfo
from vdm_jax.metrics import temporal


def _examples(n: int, micro: bool) -> list[dict]:
  out = []
  for i in range(n):
    rng = np.random.default_rng([0, 16, i])
    video, label = moving_shapes.render_video(rng, 16, 10, moving_shapes.SPEEDS)
    example = {"video": video, "label": label}
    if micro:
      example.update(fps=np.float32(8.0), motion=np.float32(curation.motion_score(video, 8.0)))
    out.append(example)
  return out


@pytest.mark.parametrize("fraction", moving_shapes.SPEEDS)
def test_speeds_configs_draw_the_asked_speed_and_the_metric_measures_it(fraction):
  """Rendered at one speed, the tracked objects move that many pixels a frame (a bounce shortens one
  frame's move a little)."""
  size = 32
  videos = np.stack([moving_shapes.render_video(np.random.default_rng(i), size, 12, (fraction,))[0]
                     for i in range(6)])
  measured = temporal.mean_over_videos(temporal.video_stats(videos))["object_speed"]
  assert 0.85 * fraction * size < measured < 1.15 * fraction * size, measured  # pixel rounding


def test_object_speed_of_squares_moving_a_known_number_of_pixels():
  """A 3x3 square moving (dy, dx) = (3, 4) px a frame: 5 px; and one still square: 0."""
  video = np.zeros((2, 5, 32, 32, 3), np.uint8)
  for t in range(5):
    video[0, t, 2 + 3 * t:5 + 3 * t, 2 + 4 * t:5 + 4 * t] = [240, 64, 64]
    video[1, t, 10:13, 10:13] = [64, 240, 64]
  np.testing.assert_allclose(temporal.video_stats(video)["object_speed"], [5.0, 0.0], atol=1e-9)


def test_only_the_speeds_config_has_the_features(tmp_path):
  plain = moving_shapes.MovingShapes(config="32", data_dir=str(tmp_path)).info.features
  speeds = moving_shapes.MovingShapes(config="speeds_32", data_dir=str(tmp_path)).info.features
  assert "motion" not in plain and "fps" not in plain
  assert {"fps", "motion"} <= set(speeds.keys())
  assert registry.get_spec("moving_shapes_speeds").tfds_name == "moving_shapes/speeds_32"
  # The original configs draw exactly as before (one uniform speed: the same rng stream).
  a = moving_shapes.render_video(np.random.default_rng(3), 16, 5)
  rng = np.random.default_rng(3)
  rng.integers(5), rng.integers(8), rng.uniform(0.12, 0.22)
  assert 0.03 <= rng.uniform(0.03, 0.08) < 0.08 and a[0].shape == (5, 16, 16, 3)


@pytest.mark.parametrize("micro", [True, False])
def test_batches_carry_fps_and_motion_when_the_dataset_has_them(monkeypatch, micro):
  examples = _examples(6, micro)
  monkeypatch.setattr(registry, "open_source", lambda name, split, data_dir: examples)
  config = DataConfig(name="moving_shapes_speeds", num_frames=4, resolution=16, prefetch=0)
  batch = pipeline.create_train_iterator(config, 4, seed=0, process_index=0, process_count=1).make_batch(0)
  if not micro:
    assert "fps" not in batch and "motion" not in batch
    return
  assert batch["fps"].dtype == np.float32 and batch["motion"].shape == (4,)
  indices = pipeline.create_train_iterator(config, 4, seed=0, process_index=0,
                                           process_count=1).example_indices(0)
  np.testing.assert_allclose(batch["motion"], [examples[i]["motion"] for i in indices])
  np.testing.assert_array_equal(batch["fps"], 8.0)
  medians = registry.micro_medians(examples, ("video", "fps", "motion"))
  assert medians == {"fps": 8.0, "motion": pytest.approx(np.median([e["motion"] for e in examples]))}
  assert registry.micro_medians(examples, ("video",)) == {}
  pytest.importorskip("grain")  # the grain loader carries the same columns (in-process reader)
  it = pipeline.create_train_iterator(dataclasses.replace(config, loader="grain", num_workers=0), 4,
                                      seed=0, process_index=0, process_count=1)
  grain_batch = next(it)
  it.close()
  assert grain_batch["motion"].dtype == np.float32 and grain_batch["fps"].shape == (4,)
  assert set(grain_batch["motion"].tolist()) <= {np.float32(e["motion"]) for e in examples}


def test_a_micro_conditioned_model_needs_a_dataset_that_stores_the_feature():
  exp = ExperimentConfig.from_config_dict(configs.default.get_config("motion"))
  info = dict(name="moving_shapes", num_classes=5, num_frames=20, channels=3, resolution=(32, 32),
              num_train_examples=4096, num_eval_examples=512)
  with pytest.raises(ConfigError, match=r"stores no \['motion'\]; use a dataset that does"):
    validate_experiment(exp, DatasetInfo(**info), 1, 1)
  validate_experiment(exp, DatasetInfo(**info, micro_medians={"fps": 8.0, "motion": 15.0}), 1, 1)
