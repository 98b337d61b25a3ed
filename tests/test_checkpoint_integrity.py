"""Damaged checkpoints: integrity.json, verify(), the fallback to the newest intact step, strict mode.

Tiny pytrees through `Checkpointer` directly; the trainer and sampler end to end are in
tests/train/test_damaged_checkpoints.py.
"""

import json
import logging
import os
import re
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import integrity
from vdm_jax.checkpoints import CheckpointDamaged, Checkpointer, abstract_like


def _state(step):
  """64x64 float32 leaves (16 KB each: stored in OCDBT data files, not inlined in b-tree nodes)."""
  k = jax.random.split(jax.random.key(step), 2)
  return {"params": {"w": jax.random.normal(k[0], (64, 64))},
          "ema": {"w": jax.random.normal(k[1], (64, 64))},
          "step": jnp.asarray(step, jnp.int32)}


def _target():
  return abstract_like(_state(0))


@pytest.fixture
def ckpt_dir(tmp_path):
  """Steps 1, 2 and 3, saved asynchronously (as the trainer saves)."""
  directory = str(tmp_path / "ckpt")
  with Checkpointer(directory) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, _state(step), data_state={"step": step}, manifest={"step": step})
  return directory


def _largest_state_file(directory, step):
  files = [os.path.join(folder, name) for folder, _, names in os.walk(os.path.join(directory,
                                                                                     str(step), "state"))
           for name in names]
  return max(files, key=os.path.getsize)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _overwrite(path):
  """Flips every third byte past the first 64, keeping the size (bit rot, a bad copy)."""
  data = bytearray(open(path, "rb").read())
  data[64::3] = bytes(b ^ 0x5A for b in data[64::3])
  open(path, "wb").write(bytes(data))


def _rel(directory, step, path):
  return os.path.relpath(path, os.path.join(directory, str(step)))


def test_every_finalized_save_gets_integrity_json(ckpt_dir):
  for step in (1, 2, 3):
    step_dir = os.path.join(ckpt_dir, str(step))
    files = json.load(open(os.path.join(step_dir, integrity.SIDECAR)))["files"]
    on_disk = {os.path.relpath(os.path.join(f, n), step_dir) for f, _, ns in os.walk(step_dir)
               for n in ns} - {integrity.SIDECAR}
    assert set(files) == on_disk and any(p.startswith("state/") for p in files)
    assert all(size == os.path.getsize(os.path.join(step_dir, p)) for p, (size, _) in files.items())
  with Checkpointer(ckpt_dir) as ckpt:
    assert [ckpt.verify(s) for s in ckpt.all_steps()] == [None, None, None]


def test_sync_save_is_sealed_at_once(tmp_path):
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(5, _state(5))
  assert os.path.exists(tmp_path / "5" / integrity.SIDECAR) and ckpt.verify(5) is None
  ckpt.close()


@pytest.mark.parametrize("damage, words", [(_truncate, r"bytes, \d+ when saved \(truncated\?\)"),
                                           (_overwrite, r"another crc32 than when saved")])
def test_damaged_latest_is_named_and_skipped(ckpt_dir, caplog, damage, words):
  path = _largest_state_file(ckpt_dir, 3)
  damage(path)
  ckpt = Checkpointer(ckpt_dir, create=False)
  reason = ckpt.verify(3)
  assert reason.startswith(f"checkpoint step 3 in {ckpt_dir} has the file {_rel(ckpt_dir, 3, path)}")
  assert re.search(words, reason) and ckpt.verify(2) is None
  with caplog.at_level(logging.WARNING):
    state, data_state, manifest = ckpt.restore(target=_target())
  assert int(state["step"]) == 2 and data_state == {"step": 2} and manifest == {"step": 2}
  warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  assert "skipped damaged checkpoint(s)" in warning and "step 3: it has the file" in warning
  assert "using step 2" in warning
  with pytest.raises(CheckpointDamaged) as strict:
    ckpt.restore(target=_target(), fallback=False)
  message = str(strict.value)
  assert "\n" not in message and message.startswith(f"checkpoint step 3 in {ckpt_dir} is damaged: ")
  assert message.endswith("; intact steps: [1, 2]") and strict.value.step == 3
  ckpt.close()
  assert sorted(os.listdir(ckpt_dir)) == ["1", "2", "3"]  # a read-only Checkpointer renames nothing


def test_named_damaged_step_is_an_error_not_replaced(ckpt_dir):
  _truncate(_largest_state_file(ckpt_dir, 2))
  with Checkpointer(ckpt_dir, create=False) as ckpt:
    with pytest.raises(CheckpointDamaged, match=r"step 2 .* is damaged: .*; intact steps: \[1, 3\]$"):
      ckpt.restore(2, target=_target())
    with pytest.raises(CheckpointDamaged, match="step 2"):
      ckpt.read_manifest(2)
    assert ckpt.read_manifest() == {"step": 3}


@pytest.mark.parametrize("item, message", [("state", "has no 'state' item (incomplete copy?)"),
                                           ("manifest", "has no manifest (incomplete copy?)")])
def test_missing_item_is_damage(ckpt_dir, item, message):
  shutil.rmtree(os.path.join(ckpt_dir, "3", item))
  with Checkpointer(ckpt_dir, create=False) as ckpt:
    assert ckpt.verify(3) == f"checkpoint step 3 in {ckpt_dir} {message}"
    assert ckpt.read_manifest() == {"step": 2}
    assert int(ckpt.restore(target=_target())[0]["step"]) == 2
    with pytest.raises(CheckpointDamaged, match=r"step 3 .* is damaged: it " + message.replace(
        "(", r"\(").replace(")", r"\)").replace("?", r"\?")):
      ckpt.read_manifest(fallback=False)


def test_unreadable_manifest_is_damage(ckpt_dir):
  with open(os.path.join(ckpt_dir, "3", "manifest", "metadata"), "w") as f:
    f.write('{"config": ')
  with Checkpointer(ckpt_dir, create=False) as ckpt:
    assert "has an unreadable manifest (JSONDecodeError: " in ckpt.verify(3)


def test_unverified_step_that_fails_to_restore_is_skipped_with_one_line(ckpt_dir, caplog):
  """A step saved before integrity.json existed: its damage shows only when restoring it."""
  for step in (1, 2, 3):
    os.remove(os.path.join(ckpt_dir, str(step), integrity.SIDECAR))
  _overwrite(_largest_state_file(ckpt_dir, 3))
  with Checkpointer(ckpt_dir, create=False) as ckpt:
    assert ckpt.verify(3) is None  # unverified, so usable until a restore fails
    with caplog.at_level(logging.WARNING):
      assert int(ckpt.restore(target=_target())[0]["step"]) == 2
    with pytest.raises(CheckpointDamaged) as strict:
      ckpt.restore(target=_target(), fallback=False)
  message = str(strict.value)
  assert "\n" not in message and "tensorstore_spec" not in message
  assert "failed to restore (array " in message and "Error: " in message
  assert "step 3: it failed to restore" in caplog.text


def test_writable_checkpointer_sets_damaged_steps_aside_and_saves_them_again(ckpt_dir):
  _overwrite(_largest_state_file(ckpt_dir, 3))
  ckpt = Checkpointer(ckpt_dir)
  assert int(ckpt.restore(target=_target())[0]["step"]) == 2
  assert ckpt.all_steps() == [1, 2] and os.path.isdir(os.path.join(ckpt_dir, "3.damaged"))
  ckpt.save(3, _state(3))
  ckpt.close()
  with Checkpointer(ckpt_dir) as ckpt:
    assert ckpt.all_steps() == [1, 2, 3] and ckpt.verify(3) is None
    restored = ckpt.restore(target=_target())[0]
  np.testing.assert_array_equal(restored["ema"]["w"], _state(3)["ema"]["w"])
  assert os.path.isdir(os.path.join(ckpt_dir, "3.damaged"))  # kept for a look, never listed


def test_every_step_damaged(ckpt_dir):
  for step in (1, 2, 3):
    shutil.rmtree(os.path.join(ckpt_dir, str(step), "state"))
  with Checkpointer(ckpt_dir, create=False) as ckpt:
    with pytest.raises(CheckpointDamaged, match=r"every checkpoint in .* is damaged \(step 3: "
                                                r"it has no 'state' item .*step 1: "):
      ckpt.restore(target=_target())


def test_target_mismatch_is_not_damage(ckpt_dir):
  """A model that does not match its checkpoint is the caller's error: no fallback."""
  target = abstract_like({**_state(0), "ema": {"w": jnp.zeros((8, 8))}})
  with Checkpointer(ckpt_dir, create=False) as ckpt:
    with pytest.raises(ValueError, match="restore target leaf 'ema/w' is") as e:
      ckpt.restore(target=target)
  assert not isinstance(e.value, CheckpointDamaged)


def test_one_line_picks_the_root_cause_and_the_array():
  try:
    try:
      raise ValueError('FAILED_PRECONDITION: Error reading "ema.w/0.0" in OCDBT database at local '
                       'file "/x/state/": ZSTD_decompressStream() failed [tensorstore_spec=\'{}\']\n'
                       "more detail")
    except ValueError as inner:
      raise Exception("Encountered error while reading array index: ...") from inner
  except Exception as outer:  # noqa: BLE001
    line = integrity.one_line(outer)
  assert line == ('array ema.w: ValueError: FAILED_PRECONDITION: Error reading "ema.w/0.0": '
                  "ZSTD_decompressStream() failed")
  assert integrity.one_line(RuntimeError("")) == "RuntimeError: "


def test_failed_restore_leaves_no_closed_event_loop_errors(tmp_path, monkeypatch, devices):
  """A read that fails while many others are in flight: those complete into the event loop Orbax
  closed and each reported 'RuntimeError: Event loop is closed' (hundreds of tracebacks)."""
  state = {f"w{i}": jnp.full((8, 8), i, jnp.float32) for i in range(64)}
  directory = str(tmp_path / "ckpt")
  with Checkpointer(directory, async_save=False) as ckpt:
    ckpt.save(1, state)
    ckpt.save(2, state)
  os.remove(os.path.join(directory, "2", integrity.SIDECAR))  # unverified: only the restore fails
  root = os.path.join(directory, "2", "state", "d")  # the merged OCDBT b-tree every read starts at
  _truncate(os.path.join(root, os.listdir(root)[0]))
  reported = []
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  mesh = jax.make_mesh((8,), ("x",), devices=devices)
  target = abstract_like(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  with Checkpointer(directory, create=False) as ckpt:
    restored = ckpt.restore(target=target)[0]
  time.sleep(1.0)  # the orphaned reads finish within ~1 s
  assert float(restored["w63"][0, 0]) == 63.0
  assert not [r for r in reported if "Event loop is closed" in str(r.exc_value)], len(reported)
