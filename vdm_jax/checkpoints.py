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

After a save is finalized, process 0 writes `<step>/integrity.json` (every file's size and crc32,
`vdm_jax.integrity`); `Checkpointer.verify` checks a step against it. Restoring without a named step
takes the newest intact step: a damaged newer one (truncated or overwritten files, a missing item,
an unreadable manifest, a failed read) is skipped with one warning line; `fallback=False` (train.py
and sample.py --strict_checkpoints) raises `CheckpointDamaged` instead, and so does a damaged step
that the caller named.

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

import os
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from vdm_jax import integrity
from vdm_jax.config import ExperimentConfig
from vdm_jax.integrity import CheckpointDamaged  # noqa: F401  (raised here; callers catch it)
from vdm_jax.versions import library_versions

PyTree = Any
T = TypeVar("T")

STATE, DATA, MANIFEST = "state", "data", "manifest"
ITEM_NAMES = (STATE, DATA, MANIFEST)
_ITEM_WORDS = {STATE: "no 'state' item", DATA: "no 'data' item", MANIFEST: "no manifest"}
_JSON_FILE = "metadata"  # where ocp.JsonCheckpointHandler puts an item's JSON
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
                  num_params: int, distill: dict | None = None) -> dict:
  """The run description saved with every step (`save` adds the step); a distillation student's
  also its teacher workdir and step, round and step counts (train/distill.py `manifest_entry`)."""
  return {"config": exp.to_dict(), "versions": library_versions(),
          "mesh": {k: int(v) for k, v in mesh.shape.items()}, "dataset": dataset,
          "num_params": int(num_params), **({"distill": dict(distill)} if distill else {})}


def read_experiment(workdir: str, step: int | None = None, *,
                    fallback: bool = True) -> tuple[ExperimentConfig, int, dict]:
  """(ExperimentConfig, step, manifest) of checkpoint `step` (None: the newest intact); no array read.

  Raises:
    FileNotFoundError: no checkpoint (or none for `step`) in workdir.
    CheckpointDamaged: `step` is damaged, or (None) the latest is and not `fallback`, or all are.
    ValueError: the manifest holds no config.
  """
  with Checkpointer(checkpoint_dir(workdir), create=False, async_save=False) as ckpt:
    step, manifest = ckpt.newest_intact(lambda s: (s, ckpt.read_manifest(s, fallback=False)),
                                        step=step, fallback=fallback and step is None)
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
    CheckpointDamaged: the step is damaged (the message lists the intact steps).
    ValueError: the checkpoint's parameters differ from the target's tree, shapes or dtypes.
  """
  with Checkpointer(checkpoint_dir(workdir), create=False, async_save=False) as ckpt:
    return ckpt.newest_intact(lambda s: ckpt.restore_item(s, _PARAM_KEYS[bool(use_ema)], target),
                              step=step, fallback=False)


def restore_newest_intact(workdir: str, restore: Callable[[int], T], *, step: int | None = None,
                          fallback: bool = True) -> T:
  """`Checkpointer.newest_intact` on workdir's checkpoints, read-only (nothing is renamed)."""
  with Checkpointer(checkpoint_dir(workdir), create=False, async_save=False) as ckpt:
    return ckpt.newest_intact(restore, step=step, fallback=fallback)


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
  silently). Every restore and manifest read first verifies the step (`verify`); see
  `newest_intact` for what happens to a damaged one.
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
    self._writable, self._async = create, async_save
    self._unsealed: list[int] = []  # saved, integrity.json not yet written
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
    data_state = integrity.checked_json(data_state, "data_state")
    manifest = integrity.checked_json(manifest, "manifest")
    integrity.check_leaves(state)
    if check_finite:
      integrity.check_finite(step, state)
    self._seal()  # Orbax's save would wait for the previous save here anyway
    self._manager.save(step, force=True, args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeSave(state),
        DATA: ocp.args.JsonSave(data_state),
        MANIFEST: ocp.args.JsonSave(manifest)}))
    self._unsealed.append(step)
    if not self._async:
      self._seal()

  def restore(self, step: int | None = None, *, target: PyTree,
              fallback: bool = True) -> tuple[PyTree, dict, dict]:
    """Restores step `step` (None: the newest intact one) onto the shardings carried by `target`.

    Args:
      step: the step to restore, damaged or not; None for the latest, or with `fallback` the
        newest intact one (see `newest_intact`).
      target: the abstract state, a pytree of `jax.ShapeDtypeStruct` with shardings (see
        `abstract_like`), with the structure, shapes and dtypes of the saved state.
      fallback: with `step` None, skip damaged newer steps (a warning) instead of raising.

    Returns:
      (state, data_state, manifest): `state` has the structure of `target` and each leaf its
      sharding.

    Raises:
      FileNotFoundError: there is no checkpoint, or no checkpoint for `step`.
      CheckpointDamaged: `step` (or without `fallback` the latest) is damaged, or every step is.
      ValueError: `target` does not match the saved tree, shapes or dtypes, or lacks a sharding.
    """
    def restore(s: int) -> tuple[PyTree, dict, dict]:
      integrity.check_target(target, self._saved_tree(s), s, self.directory)
      restored = self._read(s, ocp.args.Composite(**{
          STATE: _restore_args(target), DATA: ocp.args.JsonRestore(),
          MANIFEST: ocp.args.JsonRestore()}))
      return restored[STATE], dict(restored[DATA] or {}), dict(restored[MANIFEST] or {})

    return self.newest_intact(restore, step=step, fallback=fallback and step is None)

  def restore_item(self, step: int, key: str, target: PyTree) -> PyTree:
    """Restores only state[key] (e.g. "ema") of step `step` onto target's shardings (no verify)."""
    step = self.resolve_step(step)
    saved = self._saved_tree(step)
    where = f"checkpoint step {step} in {self.directory}"
    if not isinstance(saved, dict) or key not in saved:
      raise ValueError(f"{where} holds no '{key}' parameters. {_MODEL_HINT}")
    integrity.check_target({key: target}, {key: saved[key]}, step, self.directory, hint=_MODEL_HINT)
    restored = self._read(step, ocp.args.Composite(**{
        STATE: _restore_args({key: target}, partial=True)}))
    return restored[STATE][key]

  def _saved_tree(self, step: int) -> PyTree:
    saved = self._read(step, None)[STATE]
    return getattr(saved, "tree", saved)

  def _read(self, step: int, args: ocp.args.Composite | None) -> Any:
    """Orbax's restore of `args` (None: the item metadata); any failure as CheckpointDamaged."""
    try:
      with integrity.quiet_orphaned_reads():
        if args is None:
          return self._manager.item_metadata(step)
        return self._manager.restore(step, args=args)
    except Exception as e:  # Orbax and TensorStore raise chains of many types
      if isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e):
        raise  # the device, not the checkpoint
      logging.debug("restoring step %d of %s failed", step, self.directory, exc_info=True)
      raise integrity.damaged(self.directory, step,
                              f"failed to restore ({integrity.one_line(e)})") from None

  def read_manifest(self, step: int | None = None, *, fallback: bool = True) -> dict:
    """The manifest of step `step` (None: the newest intact step), without reading any array."""
    def read(s: int) -> dict:
      return dict(self._read(s, ocp.args.Composite(**{MANIFEST: ocp.args.JsonRestore()}))[MANIFEST]
                  or {})

    return self.newest_intact(read, step=step, fallback=fallback and step is None)

  def verify(self, step: int) -> str | None:
    """None, or one line saying what is wrong with step's files (no array is read).

    Checks that the items and the manifest's JSON are there, and every file against the step's
    integrity.json (sizes, crc32); a step without integrity.json (saved before it existed) passes.
    """
    reason = self._damage(int(step))
    return None if reason is None else f"checkpoint step {step} in {self.directory} {reason}"

  def _damage(self, step: int) -> str | None:
    return integrity.check_step(os.path.join(self.directory, str(step)), _ITEM_WORDS,
                                os.path.join(MANIFEST, _JSON_FILE))

  def newest_intact(self, restore: Callable[[int], T], *, step: int | None = None,
                    fallback: bool = True) -> T:
    """restore(s) for s = `step` (None: the latest) or, with `fallback`, the newest intact older s.

    A step is damaged when `verify` finds it so or restore raises CheckpointDamaged. Skipped steps
    are logged in one warning; a writable Checkpointer (create=True: the trainer's) renames them
    to `<step>.damaged`, out of Orbax's sight, so that the resumed run saves those steps anew.

    Raises:
      FileNotFoundError: there is no checkpoint, or none for `step`.
      CheckpointDamaged: the first step tried is damaged and not `fallback` (the message lists the
        intact steps), or every step is damaged.
    """
    first = self.resolve_step(step)
    steps = [s for s in reversed(self.all_steps()) if s <= first]
    result, skipped = integrity.newest_intact(self.directory, steps, self._damage, restore,
                                              fallback=fallback, every=self.all_steps())
    if skipped and self._writable:
      if jax.process_index() == 0:
        for s in skipped:
          path = os.path.join(self.directory, str(s))
          if os.path.isdir(path):
            logging.warning("moved damaged step %d to %s", s, integrity.set_aside(path))
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("vdm_jax: damaged checkpoints set aside")
      self._manager.reload()
    return result

  def _seal(self) -> None:
    """Waits for pending saves; then process 0 writes integrity.json into each step finalized."""
    self._manager.wait_until_finished()
    steps, self._unsealed = self._unsealed, []
    if jax.process_index() == 0:
      for step in steps:
        path = os.path.join(self.directory, str(step))
        if os.path.isdir(path):  # not deleted (max_to_keep) nor left unfinished meanwhile
          integrity.seal(path)

  def wait_until_finished(self) -> None:
    """Blocks until pending async saves are written, finalized and sealed (integrity.json)."""
    self._seal()

  def close(self) -> None:
    """Waits for pending saves, then releases the manager's resources."""
    self._seal()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()

  def resolve_step(self, step: int | None) -> int:
    """Maps None to the latest step; raises FileNotFoundError for missing steps."""
    self._seal()
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
