"""The training loop: validate, build sharded state, resume, step, log, sample, checkpoint.

`train_and_evaluate(config, workdir)` is what train.py calls. Running it again on the same workdir
resumes from the latest checkpoint (params, EMA, optimizer, step, rng and the data position), and the
resumed run is bit-identical on CPU to one that never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vdm_jax import checkpoints, data
from vdm_jax.parallel import batch_sharding, host_to_global, make_mesh
from vdm_jax.sampling import make_sample_fn
from vdm_jax.train import flops as flops_lib
from vdm_jax.train.config import ExperimentConfig
from vdm_jax.train.optimizer import learning_rate_schedule, make_optimizer
from vdm_jax.train.state import count_params, create_train_state, state_shardings
from vdm_jax.train.step import make_train_step

# Config sections that must match for a workdir's checkpoints to be resumed.
_COMPATIBLE_SECTIONS = ("model", "diffusion")
_COMPATIBLE_DATA_KEYS = ("name", "num_frames", "resolution", "image_frames")


def validate_experiment(exp: ExperimentConfig, info: data.DatasetInfo, num_devices: int,
                        num_processes: int) -> None:
  """Every check that needs no compilation; ValueError says what to change."""
  mesh = dataclasses.asdict(exp.mesh)
  sizes = list(mesh.values())
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh {mesh}: sizes must be positive, with at most one -1 (fill)")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if num_devices % fixed or (-1 not in sizes and fixed != num_devices):
    raise ValueError(f"mesh {mesh} does not fit the {num_devices} devices present; set e.g. "
                     f"--config.mesh.data=-1 --config.mesh.fsdp=1 --config.mesh.tensor=1")
  filled = {k: (num_devices // fixed if v == -1 else v) for k, v in mesh.items()}
  batch_devices = filled["data"] * filled["fsdp"]
  gbs = exp.train.global_batch_size
  if gbs % batch_devices:
    raise ValueError(f"train.global_batch_size={gbs} does not divide over the {batch_devices} "
                     "data-parallel devices (mesh data x fsdp); choose a multiple")
  if gbs % num_processes:
    raise ValueError(f"train.global_batch_size={gbs} does not divide over {num_processes} processes")
  if gbs % exp.optim.grad_accum_steps or (gbs // exp.optim.grad_accum_steps) % batch_devices:
    raise ValueError(f"train.global_batch_size={gbs} must split into optim.grad_accum_steps="
                     f"{exp.optim.grad_accum_steps} micro-batches that divide over {batch_devices} devices")
  if exp.model.prediction != exp.diffusion.prediction:
    raise ValueError(f"model.prediction={exp.model.prediction!r} and diffusion.prediction="
                     f"{exp.diffusion.prediction!r} differ; set both to the same target")
  num_frames = exp.data.num_frames + exp.data.image_frames
  exp.model.validate(num_frames, exp.data.resolution, exp.data.resolution)
  if exp.model.in_channels != info.channels or exp.model.out_channels != info.channels:
    raise ValueError(f"dataset {info.name!r} has {info.channels} channels but model.in_channels="
                     f"{exp.model.in_channels}, model.out_channels={exp.model.out_channels}; set both "
                     f"to {info.channels}")
  if exp.model.num_classes and info.num_classes == 0:
    raise ValueError(f"model.num_classes={exp.model.num_classes} but dataset {info.name!r} has no "
                     "labels; set model.num_classes=0")
  if exp.model.num_classes and info.num_classes > exp.model.num_classes:
    raise ValueError(f"dataset {info.name!r} has {info.num_classes} classes; set model.num_classes "
                     f">= {info.num_classes}")
  if exp.train.cond_frames:
    if exp.model.cond_channels != info.channels:
      raise ValueError(f"train.cond_frames={exp.train.cond_frames} needs model.cond_channels="
                       f"{info.channels} (the dataset's channels); got {exp.model.cond_channels}")
    if exp.train.cond_frames >= exp.data.num_frames:
      raise ValueError(f"train.cond_frames={exp.train.cond_frames} must be < data.num_frames="
                       f"{exp.data.num_frames}")
  elif exp.model.cond_channels:
    raise ValueError("model.cond_channels > 0 needs train.cond_frames > 0 (how many frames are given)")
  if exp.sample.guidance_weight and not (exp.model.num_classes or exp.model.cond_channels):
    raise ValueError("sample.guidance_weight != 0 needs a class- or frame-conditioned model")


def check_workdir_compatible(manifest: dict, exp: ExperimentConfig, workdir: str) -> None:
  """The checkpoints in workdir must come from the same model, diffusion and data shapes."""
  saved = manifest.get("config", {})
  current = exp.to_dict()
  diffs = []
  for section in _COMPATIBLE_SECTIONS:
    for key, value in current[section].items():
      old = saved.get(section, {}).get(key)
      if _normalise(old) != _normalise(value):
        diffs.append(f"{section}.{key}: checkpoint {old!r} vs config {value!r}")
  for key in _COMPATIBLE_DATA_KEYS:
    old = saved.get("data", {}).get(key)
    if _normalise(old) != _normalise(current["data"][key]):
      diffs.append(f"data.{key}: checkpoint {old!r} vs config {current['data'][key]!r}")
  if diffs:
    raise ValueError(f"workdir {workdir} holds checkpoints of an incompatible config:\n  "
                     + "\n  ".join(diffs)
                     + "\nUse a new --workdir, or the config the checkpoints were trained with.")


def _normalise(value: Any) -> Any:
  return list(value) if isinstance(value, tuple) else value


class _Preemption:
  """SIGTERM / SIGINT set a flag; the loop finishes the step, saves and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    logging.warning("signal %d: finishing this step, saving a checkpoint, then exiting", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


@contextlib.contextmanager
def _finish_saves_on_error(ckpt: checkpoints.Checkpointer, train_iter):
  """If the loop raises (e.g. the NaN guard), the last good async save still completes."""
  try:
    yield
  except BaseException:
    ckpt.close()
    train_iter.close()
    raise


def _progress(total: int, initial: int, enabled: bool):
  if not enabled:
    return None
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0)


def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
  """Trains as `config` says, writing checkpoints, logs and sample videos into `workdir`.

  Returns the last logged metrics (host floats).
  """
  if "://" in workdir:
    raise ValueError(f"--workdir={workdir}: URLs are not supported yet (logs and videos are written "
                     "with local file I/O); use a local or shared filesystem path, e.g. a bucket "
                     "mounted with gcsfuse")
  exp = ExperimentConfig.from_config_dict(config)
  info = data.dataset_info(exp.data)
  validate_experiment(exp, info, jax.device_count(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  is_chief = jax.process_index() == 0

  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"),
                                  max_to_keep=exp.checkpoint.max_to_keep,
                                  async_save=exp.checkpoint.async_save)
  if ckpt.latest_step() is not None:
    check_workdir_compatible(ckpt.read_manifest(), exp, workdir)

  mesh = make_mesh(**dataclasses.asdict(exp.mesh))
  num_steps = exp.train.num_steps
  tx = make_optimizer(exp.optim, num_steps)
  lr_schedule = learning_rate_schedule(exp.optim, num_steps)
  graphdef, rest, state = create_train_state(exp.model, tx, mesh, exp.train.seed)
  shardings = state_shardings(state)
  num_params = count_params(state["params"])
  schedule = exp.diffusion.schedule(exp.data.resolution)

  from vdm_jax.metrics.writers import MetricWriter
  writer = MetricWriter(workdir, enabled=is_chief)
  manifest = {"config": exp.to_dict(), "versions": checkpoints.library_versions(),
              "mesh": {k: int(v) for k, v in mesh.shape.items()},
              "dataset": dataclasses.asdict(info), "num_params": num_params}
  logging.info("config:\n%s", exp)
  logging.info("model: %s parameters; mesh %s; %d devices, %d processes", f"{num_params:,}",
               dict(mesh.shape), jax.device_count(), jax.process_count())

  data_state = None
  if ckpt.latest_step() is not None:
    state, data_state, _ = ckpt.restore(target=checkpoints.abstract_like(state, shardings))
    logging.info("resumed from step %d", int(state["step"]))
  train_iter = data.create_train_iterator(exp.data, exp.train.global_batch_size, seed=exp.train.seed)
  if data_state:
    train_iter.set_state(data_state)

  step_fn = make_train_step(graphdef, rest, tx, lr_schedule, model_cfg=exp.model,
                            diffusion_cfg=exp.diffusion, schedule=schedule, optim_cfg=exp.optim,
                            train_cfg=exp.train)
  # Compile against the first batch, then rewind the iterator so the loop consumes it.
  start_position = train_iter.get_state()
  batch = host_to_global(next(train_iter), mesh)
  train_iter.set_state(start_position)
  batch_sh = {k: batch_sharding(mesh) for k in batch}
  t0 = time.perf_counter()
  compiled = jax.jit(step_fn, in_shardings=(shardings, batch_sh), out_shardings=(shardings, None),
                     donate_argnums=0).lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  step_flops = flops_lib.compiled_flops(compiled)
  peak = flops_lib.peak_flops_per_second()
  logging.info("train step compiled in %.1f s; %.3g FLOPs/step (XLA cost analysis); peak %.3g FLOP/s",
               compile_s, step_flops, peak)
  writer.write_scalars(int(state["step"]), {"compile_seconds": compile_s, "num_params": num_params})

  sampler = _Sampler(exp, graphdef, rest, schedule, mesh, info)
  first_step = int(state["step"])
  last: dict[str, float] = {}
  pending: list[tuple[int, dict]] = []
  bar = _progress(num_steps, first_step, is_chief and exp.train.progress_bar)
  tick, tick_step = time.perf_counter(), first_step
  with _Preemption() as preempt, _finish_saves_on_error(ckpt, train_iter):
    step = first_step
    while step < num_steps:
      batch = host_to_global(next(train_iter), mesh)
      state, metrics = compiled(state, batch)  # dispatched asynchronously
      step += 1
      pending.append((step, metrics))
      # Read the flag once: a signal landing later in this iteration must not skip the save.
      stop = preempt.requested
      at_log = step % exp.train.log_every == 0 or step == num_steps or stop
      at_ckpt = step % exp.train.checkpoint_every == 0 or step == num_steps or stop
      if at_log or at_ckpt:
        last = _check_finite_and_reduce(pending)
        pending = []
        now = time.perf_counter()
        seconds = (now - tick) / max(step - tick_step, 1)
        tick, tick_step = now, step
        last.update(steps_per_second=1.0 / seconds,
                    videos_per_second=exp.train.global_batch_size / seconds,
                    mfu=step_flops / seconds / peak if peak else 0.0)
        writer.write_scalars(step, last)
        if bar is not None:
          bar.set_postfix(loss=f"{last['loss']:.4f}", vid_s=f"{last['videos_per_second']:.1f}")
      if bar is not None:
        bar.update(1)
      if at_ckpt:
        ckpt.save(step, state, data_state=train_iter.get_state(), manifest={**manifest, "step": step})
      if exp.train.sample_every and step % exp.train.sample_every == 0 and step != num_steps:
        sampler.write(state["ema"], step, writer, workdir)
        tick = time.perf_counter()  # speed metrics measure training, not sampling
      if stop:
        logging.warning("stopped at step %d on request; run the same command to resume", step)
        break
  if bar is not None:
    bar.close()
  if step == num_steps:
    sampler.write(state["ema"], step, writer, workdir)
  ckpt.wait_until_finished()
  ckpt.close()
  writer.close()
  train_iter.close()
  last["step"] = step
  return last


def _check_finite_and_reduce(pending: list[tuple[int, dict]]) -> dict[str, float]:
  """Host-side: raise on the first non-finite step; average the metrics since the last log."""
  host = jax.device_get([m for _, m in pending])
  for (step, _), m in zip(pending, host):
    if not bool(m["finite"]):
      raise FloatingPointError(
          f"non-finite loss or gradient at step {step} (loss={float(m['loss'])}, grad_norm="
          f"{float(m['grad_norm'])}). That step left the state unchanged and no non-finite value "
          "was saved; lower optim.learning_rate, keep optim.grad_clip_norm > 0, or check the data.")
  keys = [k for k in host[-1] if k != "finite"]
  return {k: float(np.mean([m[k] for m in host])) for k in keys}


class _Sampler:
  """Periodic EMA samples: a few DDIM steps, written as MP4/GIF and to TensorBoard."""

  def __init__(self, exp: ExperimentConfig, graphdef, rest, schedule, mesh, info):
    self.exp = exp
    self.mesh = mesh
    n_batch = int(np.prod([mesh.shape["data"], mesh.shape["fsdp"]]))
    self.num = max(exp.sample.num_samples, 1)
    self.num = -(-self.num // n_batch) * n_batch  # round up to divide over the batch devices
    fn = make_sample_fn(graphdef, rest, schedule=schedule,
                        sampler_config=exp.sample.sampler_config(),
                        prediction=exp.diffusion.prediction, num_classes=exp.model.num_classes,
                        guidance_weight=exp.sample.guidance_weight)
    self.fn = jax.jit(fn)
    self.shape = (self.num, exp.data.num_frames, exp.data.resolution, exp.data.resolution,
                  info.channels)
    self.cond = self._cond(info)

  def _cond(self, info) -> dict:
    cond = {}
    if self.exp.model.num_classes:
      cond["labels"] = jnp.arange(self.num, dtype=jnp.int32) % max(info.num_classes, 1)
    if self.exp.model.cond_channels:
      from vdm_jax.train.denoiser import frame_condition
      ev = next(iter(data.create_eval_iterator(self.exp.data, self.num, num_examples=self.num)))
      video = jnp.asarray(ev["video"][:, :self.exp.data.num_frames])
      known = jnp.broadcast_to(jnp.arange(self.shape[1]) < self.exp.train.cond_frames, self.shape[:2])
      cond.update(frame_condition(video, known))
    return cond

  def write(self, ema, step: int, writer, workdir: str) -> None:
    t0 = time.perf_counter()
    rng = jax.random.fold_in(jax.random.key(self.exp.train.seed + 17), step)
    sh = batch_sharding(self.mesh)
    z = jax.device_put(jax.random.normal(jax.random.key(self.exp.train.seed + 3), self.shape), sh)
    videos = self.fn(ema, rng, z, self.cond)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      videos = multihost_utils.process_allgather(videos, tiled=True)
    videos = np.asarray(jax.device_get(videos))[: self.exp.sample.num_samples]
    if jax.process_index() != 0:
      return
    from vdm_jax.metrics import video_io
    out_dir = os.path.join(workdir, "samples", f"step_{step:08d}")
    video_io.save_videos(out_dir, videos, fps=self.exp.sample.fps)
    writer.write_videos(step, {"samples/ema": videos}, fps=self.exp.sample.fps)
    logging.info("step %d: wrote %d samples to %s in %.1f s", step, len(videos), out_dir,
                 time.perf_counter() - t0)
