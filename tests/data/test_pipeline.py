"""The index-based pipeline on the embedded moving_shapes dataset."""

import json

import numpy as np
import pytest

from vdm_jax import data


def _cfg(data_dir, **kw):
  return data.DataConfig(data_dir=data_dir, num_workers=1, **kw)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_batch_shapes_dtypes_ranges(data_dir):
  cfg = _cfg(data_dir, num_frames=8, frame_stride=2, random_flip=True)
  it = data.create_train_iterator(cfg, 6, seed=0, process_index=0,
                                  process_count=1)
  batch = next(it)
  assert batch["video"].shape == (6, 8, 32, 32, 3)
  assert batch["video"].dtype == np.float32
  assert batch["video"].min() >= -1.0 and batch["video"].max() <= 1.0
  assert batch["video"].min() == -1.0 and batch["video"].max() > 0.0
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (6,)
  assert ((batch["label"] >= 0) & (batch["label"] < 5)).all()
  assert batch["image_mask"].shape == (6, 8) and not batch["image_mask"].any()
  it.close()


def test_deterministic_for_a_seed(data_dir):
  cfg = _cfg(data_dir, random_flip=True)
  a = data.create_train_iterator(cfg, 4, seed=3, process_index=0,
                                 process_count=1)
  b = data.create_train_iterator(cfg, 4, seed=3, process_index=0,
                                 process_count=1)
  c = data.create_train_iterator(cfg, 4, seed=4, process_index=0,
                                 process_count=1)
  for x, y, z in zip(_take(a, 3), _take(b, 3), _take(c, 3)):
    np.testing.assert_array_equal(x["video"], y["video"])
    np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(x["video"], z["video"])


def test_hosts_split_the_global_batch(data_dir):
  cfg = _cfg(data_dir, prefetch=0)
  whole = data.create_train_iterator(cfg, 8, seed=1, process_index=0,
                                     process_count=1)
  hosts = [data.create_train_iterator(cfg, 8, seed=1, process_index=p,
                                      process_count=2) for p in range(2)]
  for _ in range(2):
    parts = [next(h) for h in hosts]
    assert parts[0]["video"].shape[0] == 4
    np.testing.assert_array_equal(
        np.concatenate([p["video"] for p in parts]), next(whole)["video"])


def test_host_shards_disjoint_and_complete_over_an_epoch(data_dir):
  cfg = _cfg(data_dir, prefetch=0)
  g = 64
  hosts = [data.create_train_iterator(cfg, g, seed=2, process_index=p,
                                      process_count=4) for p in range(4)]
  n = hosts[0].num_examples
  assert n % g == 0
  seen = [np.concatenate([h.example_indices(s) for s in range(n // g)])
          for h in hosts]
  for i in range(4):
    for j in range(i + 1, 4):
      assert not set(seen[i]) & set(seen[j])
  assert sorted(np.concatenate(seen).tolist()) == list(range(n))


def test_restored_iterator_yields_the_same_next_batches(data_dir):
  cfg = _cfg(data_dir, random_flip=True, image_frames=1)
  first = data.create_train_iterator(cfg, 4, seed=5, process_index=0,
                                     process_count=1)
  _take(first, 3)
  state = json.loads(json.dumps(first.get_state()))
  assert state["step"] == 3
  expected = _take(first, 2)
  resumed = data.create_train_iterator(cfg, 4, seed=5, process_index=0,
                                       process_count=1)
  next(resumed)  # a different position, prefetched batches in flight
  resumed.set_state(state)
  for want, got in zip(expected, _take(resumed, 2)):
    np.testing.assert_array_equal(want["video"], got["video"])
    np.testing.assert_array_equal(want["label"], got["label"])
  other_seed = data.create_train_iterator(cfg, 4, seed=6, process_index=0,
                                          process_count=1)
  with pytest.raises(ValueError, match="seed"):
    other_seed.set_state(state)


def test_image_frames_and_mask(data_dir):
  cfg = _cfg(data_dir, num_frames=4, image_frames=3)
  batch = next(data.create_train_iterator(cfg, 4, seed=0, process_index=0,
                                          process_count=1))
  assert batch["video"].shape == (4, 7, 32, 32, 3)
  np.testing.assert_array_equal(batch["image_mask"][0],
                                [False] * 4 + [True] * 3)
  # The clip's frames share one shape colour; appended frames come from other
  # videos, so across the batch some colour set differs from its clip's.
  video = batch["video"]
  def colours(frames):
    flat = frames.reshape(-1, 3)
    return {tuple(c) for c in np.unique(flat, axis=0) if c.max() > -1.0}
  assert all(len(colours(v[:4])) == 1 for v in video)
  assert any(colours(v[4:]) != colours(v[:4]) for v in video)


def test_eval_iterator_is_finite_ordered_and_padded(data_dir):
  cfg = _cfg(data_dir)
  batches = list(data.create_eval_iterator(cfg, 5, num_examples=12))
  assert len(batches) == 3
  assert [b["valid"].sum() for b in batches] == [5, 5, 2]
  assert (batches[-1]["video"][2:] == 0).all()
  again = list(data.create_eval_iterator(cfg, 5, num_examples=12))
  for x, y in zip(batches, again):
    np.testing.assert_array_equal(x["video"], y["video"])
  assert batches[0]["video"].shape == (5, 16, 32, 32, 3)


def test_dataset_info_and_config_errors(data_dir):
  info = data.dataset_info(_cfg(data_dir))
  assert (info.num_classes, info.num_frames, info.channels) == (5, 20, 3)
  assert info.num_train_examples == 4096 and info.num_eval_examples == 512
  with pytest.raises(ValueError, match="spans 31 frames"):
    data.dataset_info(_cfg(data_dir, num_frames=16, frame_stride=2))
  with pytest.raises(ValueError, match="moving_shapes"):
    data.dataset_info(_cfg(data_dir, name="no_such_set"))
  with pytest.raises(ValueError, match="multiple of the process count"):
    data.create_train_iterator(_cfg(data_dir), 6, seed=0, process_index=0,
                               process_count=4)
  assert data.DataConfig(**dict(data.DataConfig().__dict__)).name == (
      "moving_shapes")
