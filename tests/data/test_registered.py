"""Registered TFDS video datasets, offline through tfds.testing.mock_data."""

import numpy as np
import pytest

from vdm_jax import data
from vdm_jax.data.tf_setup import tfds

CASES = [
    # name, train split, info (classes, frames, channels, resolution)
    ("moving_mnist", "test", (0, 20, 1, (64, 64))),
    ("bair_robot_pushing_small", "train", (0, 30, 3, (64, 64))),
    ("ucf101", "train", (101, None, 3, (256, 256))),
]


@pytest.mark.parametrize("name,split,expected", CASES)
def test_mock_data_through_the_pipeline(tmp_path, name, split, expected):
  # loader="numpy": mock_data patches this process only (grain's workers, which data.loader="auto"
  # picks for these encoded sets on 5+ cores, would read the real, absent data).
  cfg = data.DataConfig(name=name, data_dir=str(tmp_path), train_split=split,
                        eval_split=split, num_frames=8, resolution=32,
                        prefetch=0, loader="numpy")
  with tfds.testing.mock_data(num_examples=6):
    info = data.dataset_info(cfg)
    batch = next(data.create_train_iterator(cfg, 2, seed=0, process_index=0,
                                            process_count=1))
    evals = list(data.create_eval_iterator(cfg, 4))
  assert (info.num_classes, info.num_frames, info.channels,
          info.resolution) == expected
  assert batch["video"].shape == (2, 8, 32, 32, expected[2])
  assert batch["video"].dtype == np.float32
  assert -1.0 <= batch["video"].min() < batch["video"].max() <= 1.0
  assert batch["label"].dtype == np.int32
  if not expected[0]:
    assert (batch["label"] == 0).all()
  assert [b["valid"].sum() for b in evals] == [4, 2]


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
  cfg = data.DataConfig(name="bair_robot_pushing_small",
                        data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError) as err:
    data.create_train_iterator(cfg, 2, seed=0, process_index=0,
                               process_count=1)
  message = str(err.value)
  assert "tfds build bair_robot_pushing_small --file_format=array_record" in (
      message)
  assert str(tmp_path) in message


def test_unknown_name_lists_known_ones():
  with pytest.raises(ValueError, match="bair_robot_pushing_small"):
    data.create_train_iterator(data.DataConfig(name="kinetics"), 2, seed=0,
                               process_index=0, process_count=1)
