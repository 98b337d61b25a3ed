"""The one Orbax module: the on-disk checkpoint format, whole.

Nothing else in vdm_jax opens Orbax. A checkpoint step directory holds three items:
  state     the train state pytree (params, EMA params, optimizer state, step, rng key data),
            saved with `ocp.args.StandardSave`; every leaf a jax.Array (or numpy array).
  data      JSON: the data iterator's state, so a resumed run sees the same examples.
  manifest  JSON (`make_manifest`): config, library versions, mesh, dataset, param count, step;
            what sampling rebuilds the model from (`read_experiment`).

Layout on disk (Orbax 0.12): `DIR/<step>/{state,data,manifest,commit_success.txt,...}`. A save is
written into `DIR/<step>.orbax-checkpoint-tmp` and renamed to `DIR/<step>` only once every item is
complete, so a process killed during an (async) save leaves a tmp directory that Orbax never lists:
`latest_step()` and `restore()` only see finalized steps, and opening a `Checkpointer` with
`create=True` deletes such leftovers.

Restoring onto another topology (8 devices -> 1, (4, 2) -> (4,)) needs an abstract target that
carries the NEW shardings; build one with `abstract_like(state_or_shapes, shardings)`.

Usage:
  ckpt = Checkpointer(checkpoint_dir(workdir, create=True), max_to_keep=3)
  ckpt.save(step, state, data_state=it.get_state(), manifest=manifest)   # async
  ...
  state, data_state, manifest = ckpt.restore(target=abstract_like(state, shardings))
  ckpt.close()                                                          # waits for pending saves
  exp, step, manifest = read_experiment(workdir)                        # sampling: no arrays read
  params = restore_params(workdir, step, target, use_ema=True)          # EMA only, onto any mesh
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from vdm_jax.config import ExperimentConfig
from vdm_jax.versions import library_versions

PyTree = Any

STATE, DATA, MANIFEST = "state", "data", "manifest"
ITEM_NAMES = (STATE, DATA, MANIFEST)
CHECKPOINTS = "checkpoints"  # the folder under a workdir
_PARAM_KEYS = {True: "ema", False: "params"}  # use_ema -> the train state's key
_MODEL_HINT = ("The checkpoint does not match the model rebuilt from its manifest: was it written "
               "by another version of the model code? Sample with the code that trained it.")


def checkpoint_dir(workdir: str, *, create: bool = False) -> str:
  """workdir/checkpoints; without `create`, FileNotFoundError saying what to pass if missing."""
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
  if not create and not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory {directory}: pass the --workdir of a "
                            "training run (train.py writes checkpoints into WORKDIR/checkpoints)")
  return directory


def make_manifest(exp: ExperimentConfig, mesh: jax.sharding.Mesh, dataset: dict,
                  num_params: int) -> dict:
  """The run description saved with every step (`save` adds the step)."""
  return {"config": exp.to_dict(), "versions": library_versions(),
          "mesh": {k: int(v) for k, v in mesh.shape.items()}, "dataset": dataset,
          "num_params": int(num_params)}


def read_experiment(workdir: str, step: int | None = None) -> tuple[ExperimentConfig, int, dict]:
  """(ExperimentConfig, step, manifest) of checkpoint `step` (latest when None); no array read.

  Raises:
    FileNotFoundError: no checkpoint (or none for `step`) in workdir.
    ValueError: the manifest holds no config.
  """
  with Checkpointer(checkpoint_dir(workdir), create=False, async_save=False) as ckpt:
    step = ckpt.resolve_step(step)
    manifest = ckpt.read_manifest(step)
  if "config" not in manifest:
    raise ValueError(f"checkpoint step {step} in {checkpoint_dir(workdir)} has no config in its "
                     "manifest, so the model cannot be rebuilt; it was not written by train.py")
  return ExperimentConfig.from_config_dict(manifest["config"]), step, manifest


def restore_params(workdir: str, step: int, target: PyTree, *, use_ema: bool = True) -> PyTree:
  """Restores only the EMA (or raw) parameters of a train-state checkpoint onto target's shardings.

  Args:
    workdir: the training run's workdir.
    step: a finalized step.
    target: abstract params (ShapeDtypeStruct leaves with shardings), from
      vdm_jax.model.abstract_model.
    use_ema: restore 'ema' (True) or 'params'.

  Raises:
    ValueError: the checkpoint's parameters differ from the target's tree, shapes or dtypes.
  """
  with Checkpointer(checkpoint_dir(workdir), create=False, async_save=False) as ckpt:
    return ckpt.restore_item(step, _PARAM_KEYS[bool(use_ema)], target)


def abstract_like(state: PyTree, shardings: PyTree | jax.sharding.Sharding | None = None) -> PyTree:
  """Builds an abstract restore target: the same tree of `jax.ShapeDtypeStruct`.

  Args:
    state: a pytree of arrays or of `jax.ShapeDtypeStruct` (e.g. the output of `jax.eval_shape`).
    shardings: None to keep each leaf's own `.sharding`; one `jax.sharding.Sharding` for every leaf
      (e.g. `SingleDeviceSharding(jax.devices()[0])` to restore onto one device); or a pytree of
      shardings with the structure of `state`.

  Returns:
    A pytree with the structure of `state` whose leaves are `jax.ShapeDtypeStruct(shape, dtype,
    sharding=...)`.
  """
  if shardings is None:
    return jax.tree.map(lambda x: _sds(x, getattr(x, "sharding", None)), state)
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: _sds(x, shardings), state)
  return jax.tree.map(_sds, state, shardings)



def _sds(x: Any, sharding: jax.sharding.Sharding | None) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


class Checkpointer:
  """Saves and restores (state, data_state, manifest) per step under one directory.

  Saving a step that is already saved is a no-op (logged): in a deterministic run the same step
  holds the same state, and a training loop may reach its final-step save and a periodic save at
  the same step. Saving a step older than the latest one raises ValueError (Orbax would skip it
  silently).
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True,
               create: bool = True):
    """Opens (and with `create`, makes) the checkpoint directory.

    Args:
      directory: where step directories live, e.g. `workdir/checkpoints`.
      max_to_keep: newest checkpoints kept; older ones are deleted after each save.
      async_save: if True, `save` returns once the arrays are copied to host memory and the files
        are written in a background thread; call `wait_until_finished` or `close` before exiting.
      create: create `directory` if missing and delete unfinished (tmp) saves left in it. Pass
        False to only read (e.g. sampling from a training run's workdir).
    """
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
    self.directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=create, cleanup_tmp_directories=create,
        enable_async_checkpointing=async_save)
    handlers = {STATE: ocp.PyTreeCheckpointHandler(), DATA: ocp.JsonCheckpointHandler(),
                MANIFEST: ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=ITEM_NAMES, item_handlers=handlers)

  def latest_step(self) -> int | None:
    """The newest finalized step, or None when there is none (an async save in flight is not)."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def all_steps(self) -> list[int]:
    """All finalized steps, ascending; a step whose async save is still in flight is left out."""
    steps = sorted(self._manager.all_steps())
    if steps and self._manager.is_saving_in_progress():
      # Orbax lists the in-flight step at once; it is complete only once renamed from its tmp dir.
      steps = [s for s in steps if (epath.Path(self.directory) / str(s)).exists()]
    return steps

  def save(self, step: int, state: PyTree, *, data_state: dict | None = None,
           manifest: dict | None = None, check_finite: bool = True) -> None:
    """Saves `state`, `data_state` and `manifest` as step `step` (asynchronously by default).

    Must be called by every process with the same step; Orbax writes each shard once.

    Args:
      step: the training step, >= 0.
      state: a pytree of jax.Arrays (dict or nnx.State); typed PRNG keys must be passed as
        `jax.random.key_data(key)` (uint32).
      data_state: JSON-serializable data iterator state ({} when None).
      manifest: JSON-serializable run description ({} when None).
      check_finite: refuse to save a state with a NaN or Inf in a floating leaf.

    Raises:
      FloatingPointError: `check_finite` and a floating leaf holds NaN/Inf (nothing is written).
      ValueError: `step` is negative or older than the latest saved step.
      TypeError: a leaf is not an array, or data_state / manifest is not JSON-serializable.
    """
    step = int(step)
    if step < 0:
      raise ValueError(f"checkpoint step must be >= 0, got {step}")
    if step in self._manager.all_steps():  # finalized or in flight
      logging.warning("Checkpoint step %d already saved in %s; not saving it again.", step,
                      self.directory)
      return
    latest = self.latest_step()
    if latest is not None and step < latest:
      raise ValueError(
          f"cannot save step {step}: {self.directory} already holds the newer step {latest}. "
          "Resume from the latest step, or use a fresh --workdir.")
    data_state = _checked_json(data_state, "data_state")
    manifest = _checked_json(manifest, "manifest")
    _check_leaves(state)
    if check_finite:
      _check_finite(step, state)
    self._manager.save(step, force=True, args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeSave(state),
        DATA: ocp.args.JsonSave(data_state),
        MANIFEST: ocp.args.JsonSave(manifest)}))

  def restore(self, step: int | None = None, *, target: PyTree) -> tuple[PyTree, dict, dict]:
    """Restores step `step` (latest when None) onto the shardings carried by `target`.

    Args:
      step: the step to restore; None for the latest finalized one.
      target: the abstract state, a pytree of `jax.ShapeDtypeStruct` with shardings (see
        `abstract_like`), with the structure, shapes and dtypes of the saved state.

    Returns:
      (state, data_state, manifest): `state` has the structure of `target` and each leaf its
      sharding.

    Raises:
      FileNotFoundError: there is no checkpoint, or no checkpoint for `step`.
      ValueError: `target` does not match the saved tree, shapes or dtypes, or lacks a sharding.
    """
    step = self.resolve_step(step)
    _check_target(target, self._saved_tree(step), step, self.directory)
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        STATE: _restore_args(target),
        DATA: ocp.args.JsonRestore(),
        MANIFEST: ocp.args.JsonRestore()}))
    return restored[STATE], dict(restored[DATA] or {}), dict(restored[MANIFEST] or {})

  def restore_item(self, step: int, key: str, target: PyTree) -> PyTree:
    """Restores only state[key] (e.g. "ema") of step `step` onto target's shardings."""
    step = self.resolve_step(step)
    saved = self._saved_tree(step)
    where = f"checkpoint step {step} in {self.directory}"
    if not isinstance(saved, dict) or key not in saved:
      raise ValueError(f"{where} holds no '{key}' parameters. {_MODEL_HINT}")
    _check_target({key: target}, {key: saved[key]}, step, self.directory, hint=_MODEL_HINT)
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        STATE: _restore_args({key: target}, partial=True)}))
    return restored[STATE][key]

  def _saved_tree(self, step: int) -> PyTree:
    saved = self._manager.item_metadata(step)[STATE]
    return getattr(saved, "tree", saved)

  def read_manifest(self, step: int | None = None) -> dict:
    """Reads the manifest of step `step` (latest when None) without reading any array."""
    step = self.resolve_step(step)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{MANIFEST: ocp.args.JsonRestore()}))
    return dict(restored[MANIFEST] or {})

  def wait_until_finished(self) -> None:
    """Blocks until pending async saves are written and finalized."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then releases the manager's resources."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()

  def resolve_step(self, step: int | None) -> int:
    """Maps None to the latest step; raises FileNotFoundError for missing steps."""
    self._manager.wait_until_finished()
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(
          f"no checkpoint in {self.directory}: train first, or pass --workdir of a training run")
    if step is None:
      return steps[-1]
    if int(step) not in steps:
      raise FileNotFoundError(
          f"no checkpoint for step {step} in {self.directory}; available steps: {steps}")
    return int(step)


def _restore_args(target: PyTree, partial: bool = False) -> ocp.args.PyTreeRestore:
  return ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=partial)


def _path_str(path: Sequence[Any]) -> str:
  """A key path as 'params/layers/0/kernel', the same for dicts, lists, attributes and metadata."""
  parts = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _leaves_by_path(tree: PyTree) -> dict[str, Any]:
  return {_path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_leaves(state: PyTree) -> None:
  for path, x in _leaves_by_path(state).items():
    dtype = getattr(x, "dtype", None)
    if dtype is None or not hasattr(x, "shape"):
      raise TypeError(f"state leaf '{path}' is a {type(x).__name__}, not an array: "
                      "put arrays only in the saved state (jnp.asarray(...)).")
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      raise TypeError(f"state leaf '{path}' is a typed PRNG key: save "
                      "jax.random.key_data(key) and rebuild it with jax.random.wrap_key_data.")


def _check_finite(step: int, state: PyTree) -> None:
  """Raises FloatingPointError naming the first floating leaf holding NaN or Inf."""
  leaves = {p: x for p, x in _leaves_by_path(state).items()
            if jax.dtypes.issubdtype(x.dtype, np.inexact)}
  # One async dispatch per leaf, one host transfer for all of them.
  finite = jax.device_get([jax.numpy.isfinite(x).all() for x in leaves.values()])
  for path, ok in zip(leaves, finite):
    if not ok:
      raise FloatingPointError(
          f"refusing to save checkpoint step {step}: leaf '{path}' holds NaN or Inf. "
          "Lower the learning rate, check the data, or resume from the last checkpoint.")


def _checked_json(value: dict | None, name: str) -> dict:
  value = {} if value is None else value
  if not isinstance(value, dict):
    raise TypeError(f"{name} must be a dict, got {type(value).__name__}")
  try:
    json.dumps(value)
  except (TypeError, ValueError) as e:
    raise TypeError(f"{name} must be JSON-serializable ({e}); convert ConfigDicts with "
                    ".to_dict() and numpy scalars with .item().") from e
  return value


def _check_target(target: PyTree, saved: PyTree, step: int, directory: str,
                  hint: str = "Build the target from the same model config.") -> None:
  """Compares target against the saved metadata; raises ValueError at the first mismatch."""
  want = _leaves_by_path(target)
  have = _leaves_by_path(saved)
  where = f"checkpoint step {step} in {directory}"
  for path, t in want.items():
    if path not in have:
      raise ValueError(f"restore target leaf '{path}' is not in {where}; saved leaves start "
                       f"with {sorted(have)[:5]}. {hint}")
    s = have[path]
    if tuple(t.shape) != tuple(s.shape) or np.dtype(t.dtype) != np.dtype(s.dtype):
      raise ValueError(
          f"restore target leaf '{path}' is {tuple(t.shape)} {np.dtype(t.dtype)} but {where} "
          f"holds {tuple(s.shape)} {np.dtype(s.dtype)}. {hint}")
    if getattr(t, "sharding", None) is None:
      raise ValueError(f"restore target leaf '{path}' has no sharding: build the target with "
                       "abstract_like(state, shardings).")
  extra = sorted(set(have) - set(want))
  if extra:
    raise ValueError(f"{where} holds leaf '{extra[0]}' (shape {tuple(have[extra[0]].shape)}) "
                     f"that the restore target lacks ({len(extra)} such leaves). {hint}")
