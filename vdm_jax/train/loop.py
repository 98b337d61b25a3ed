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
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging

from vdm_jax import checkpoints, data, generation
from vdm_jax.config import ExperimentConfig, validate_experiment
from vdm_jax.metrics.writers import MetricWriter
from vdm_jax.model import count_params
from vdm_jax.parallel import batch_sharding, host_to_global, make_mesh
from vdm_jax.train import distill, inflate
from vdm_jax.train import flops as flops_lib
from vdm_jax.train.optimizer import learning_rate_schedule, make_optimizer
from vdm_jax.train.state import create_train_state, state_shardings
from vdm_jax.train.step import make_train_step
from vdm_jax.train.workdir import WorkdirLock, check_workdir_compatible, save_error


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
def _finish_saves_on_error(ckpt: checkpoints.Checkpointer, train_iter: Any) -> Iterator[None]:
  """If the loop raises (e.g. the NaN guard), the last good async save still completes."""
  try:
    yield
  except BaseException:
    ckpt.close()
    train_iter.close()
    raise


def _progress(total: int, initial: int, enabled: bool) -> Any:
  if not enabled:
    return None
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top  (optional display dependency)
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0)


@dataclasses.dataclass
class _Run:
  """Everything the loop needs, built (and resumed) before the first step."""
  exp: ExperimentConfig
  workdir: str
  mesh: jax.sharding.Mesh
  ckpt: checkpoints.Checkpointer
  writer: MetricWriter
  state: dict
  manifest: dict
  train_iter: Any
  step_fn: Callable
  sampling: generation.SamplingModel
  step_args: tuple = ()  # step_fn's arguments after the batch (a distillation teacher's params)
  step_flops: float = 0.0
  peak: float = 0.0


def _check_workdir(workdir: str) -> None:
  if "://" in workdir:
    raise ValueError(f"--workdir={workdir}: URLs are not supported yet (logs and videos are written "
                     "with local file I/O); use a local or shared filesystem path, e.g. a bucket "
                     "mounted with gcsfuse")


def _prepare(config: Any, workdir: str, lock: WorkdirLock, strict_checkpoints: bool = False
             ) -> _Run:
  """Validates the config, creates (or resumes) the sharded state and the data iterator."""
  _check_workdir(workdir)
  exp = ExperimentConfig.from_config_dict(config)
  info = data.dataset_info(exp.data)
  validate_experiment(exp, info, jax.device_count(), jax.process_count())  # before the workdir
  lock.acquire()  # a workdir that cannot be written or is in use by another run: refused here
  os.makedirs(workdir, exist_ok=True)
  ckpt = checkpoints.Checkpointer(checkpoints.checkpoint_dir(workdir, create=True),
                                  max_to_keep=exp.checkpoint.max_to_keep,
                                  async_save=exp.checkpoint.async_save)
  if ckpt.latest_step() is not None:  # a damaged newer step is skipped (and set aside) unless strict
    check_workdir_compatible(ckpt.read_manifest(fallback=not strict_checkpoints), exp, workdir)
  mesh = make_mesh(**dataclasses.asdict(exp.mesh))
  tx = make_optimizer(exp.optim, exp.train.num_steps)
  graphdef, rest, state = create_train_state(exp.model, tx, mesh, exp.train.seed)
  logging.info("config:\n%s", exp)
  logging.info("model: %s parameters; mesh %s; %d devices, %d processes",
               f"{count_params(exp.model):,}", dict(mesh.shape), jax.device_count(),
               jax.process_count())
  data_state, resumed = None, None
  if ckpt.latest_step() is not None:
    target = checkpoints.abstract_like(state, state_shardings(state))
    state, data_state, resumed = ckpt.restore(target=target, fallback=not strict_checkpoints)
    logging.info("resumed from step %d", int(state["step"]))
  train_iter = data.create_train_iterator(exp.data, exp.train.global_batch_size,
                                          seed=exp.train.seed)
  if data_state:
    train_iter.set_state(data_state)
  inflate.check_trainable(state["params"], exp.optim.trainable)
  if exp.train.init_from and resumed is None:
    state, initialised = inflate.init_from(exp, state, mesh)
    logging.info("parameters from %s", initialised)
  state, step_fn, step_args, distilled = _train_step(exp, graphdef, rest, tx, state, resumed)
  manifest = checkpoints.make_manifest(exp, mesh, dataclasses.asdict(info),
                                       count_params(exp.model), distill=distilled)
  sampling = generation.SamplingModel(exp, graphdef, rest, state["ema"], mesh, int(state["step"]))
  # resume_step: metrics.jsonl rows of steps after the checkpoint (logged, then replayed) are dropped.
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0, resume_step=int(state["step"]))
  return _Run(exp, workdir, mesh, ckpt, writer, state, manifest, train_iter, step_fn, sampling,
              step_args)


def _train_step(exp: ExperimentConfig, graphdef: Any, rest: Any, tx: Any, state: dict,
                resumed: dict | None) -> tuple[dict, Callable, tuple, dict | None]:
  """(state, the pure train step, its arguments after the batch, the manifest's "distill" entry).

  The diffusion train step, or with a `distill` teacher the progressive-distillation step
  (train/distill.py: the teacher's params are the extra argument; a fresh student starts from them).
  """
  lr = learning_rate_schedule(exp.optim, exp.train.num_steps)
  schedule = exp.diffusion.schedule(exp.data.resolution)
  if exp.distill.enabled:
    return distill.prepare(exp, graphdef, rest, tx, lr, schedule, state, resumed)
  step_fn = make_train_step(graphdef, rest, tx, lr, model_cfg=exp.model, diffusion_cfg=exp.diffusion,
                            schedule=schedule, optim_cfg=exp.optim, train_cfg=exp.train,
                            cascade_cfg=exp.cascade)
  return state, step_fn, (), None


def _compile(run: _Run) -> Callable:
  """The jitted, donated train step compiled against the first batch (then rewound)."""
  start_position = run.train_iter.get_state()
  batch = host_to_global(next(run.train_iter), run.mesh)
  run.train_iter.set_state(start_position)
  shardings = state_shardings(run.state)
  batch_sh = {k: batch_sharding(run.mesh) for k in batch}
  args_sh = tuple(state_shardings(arg) for arg in run.step_args)
  t0 = time.perf_counter()
  compiled = jax.jit(run.step_fn, in_shardings=(shardings, batch_sh) + args_sh,
                     out_shardings=(shardings, None), donate_argnums=0
                     ).lower(run.state, batch, *run.step_args).compile()
  compile_s = time.perf_counter() - t0
  run.step_flops = flops_lib.compiled_flops(compiled)
  run.peak = flops_lib.peak_flops_per_second()
  logging.info("train step compiled in %.1f s; %.3g FLOPs/step (XLA cost analysis); "
               "peak %.3g FLOP/s", compile_s, run.step_flops, run.peak)
  run.writer.write_scalars(int(run.state["step"]), {"compile_seconds": compile_s,
                                                    "num_params": run.manifest["num_params"]})
  return compiled


def _write_samples(run: _Run, step: int) -> None:
  """EMA samples of the run's sample section through the generation path, as files and to TB."""
  t0 = time.perf_counter()
  exp = run.exp
  model = dataclasses.replace(run.sampling, params=run.state["ema"], step=step)
  opts = generation.GenerateOptions(num_samples=max(exp.sample.num_samples, 1),
                                    seed=exp.train.seed, progress_chunks=1)
  videos, protocol = generation.generate(model, opts)
  if jax.process_index() != 0:
    return
  out_dir = os.path.join(run.workdir, "samples", f"step_{step:08d}")
  generation.write_samples(out_dir, videos, protocol, ground_truth=protocol.pop("ground_truth", None))
  run.writer.write_videos(step, {"samples/ema": videos}, fps=exp.sample.fps)
  logging.info("step %d: wrote %d samples to %s in %.1f s", step, len(videos), out_dir,
               time.perf_counter() - t0)


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


class _Speed:
  """Steps/s, videos/s and MFU over the steps since the last log (sampling time excluded)."""

  def __init__(self, run: _Run, step: int):
    self.run, self.tick, self.tick_step = run, time.perf_counter(), step

  def restart(self) -> None:
    self.tick = time.perf_counter()

  def metrics(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    seconds = (now - self.tick) / max(step - self.tick_step, 1)
    self.tick, self.tick_step = now, step
    run = self.run
    return {"steps_per_second": 1.0 / seconds,
            "videos_per_second": run.exp.train.global_batch_size / seconds,
            "mfu": run.step_flops / seconds / run.peak if run.peak else 0.0}


def _save(run: _Run, step: int, pending: int | None) -> None:
  """Saves `step`; a failure (of this save or of the async one of `pending`) ends the run in a line."""
  try:
    run.ckpt.save(step, run.state, data_state=run.train_iter.get_state(),
                  manifest={**run.manifest, "step": step})
  except (OSError, ValueError, RuntimeError) as e:  # tensorstore reports ENOSPC as a ValueError
    raise save_error(e, run.ckpt, step, pending) from e


def _loop(run: _Run, compiled: Callable, preempt: _Preemption) -> tuple[int, dict[str, float]]:
  """Steps until num_steps or a stop request; logs, checkpoints and samples on schedule."""
  exp, num_steps = run.exp, run.exp.train.num_steps
  step = int(run.state["step"])
  saved = None  # the step last handed to the (async) checkpointer
  last: dict[str, float] = {}
  pending: list[tuple[int, dict]] = []
  bar = _progress(num_steps, step, jax.process_index() == 0 and exp.train.progress_bar)
  speed = _Speed(run, step)
  while step < num_steps:
    run.state, metrics = compiled(run.state, host_to_global(next(run.train_iter), run.mesh),
                                  *run.step_args)
    step += 1
    pending.append((step, metrics))
    stop = preempt.requested  # read once: a later signal must not skip this step's save
    at_log = step % exp.train.log_every == 0 or step == num_steps or stop
    at_ckpt = step % exp.train.checkpoint_every == 0 or step == num_steps or stop
    if at_log or at_ckpt:
      last = {**_check_finite_and_reduce(pending), **speed.metrics(step)}
      pending = []
      run.writer.write_scalars(step, last)
      if bar is not None:
        bar.set_postfix(loss=f"{last['loss']:.4f}", vid_s=f"{last['videos_per_second']:.1f}")
    if bar is not None:
      bar.update(1)
    if at_ckpt:
      _save(run, step, saved)
      saved = step
    if exp.train.sample_every and step % exp.train.sample_every == 0 and step != num_steps:
      _write_samples(run, step)
      speed.restart()  # speed metrics measure training, not sampling
    if stop:
      logging.warning("stopped at step %d on request; run the same command to resume", step)
      break
  if bar is not None:
    bar.close()
  return step, last


def train_and_evaluate(config: Any, workdir: str, *, strict_checkpoints: bool = False
                       ) -> dict[str, float]:
  """Trains as `config` says, writing checkpoints, logs and sample videos into `workdir`.

  Process 0 holds `WORKDIR/.lock` from before anything is built until the end (train/workdir.py).

  Resumes from the newest intact checkpoint: a damaged newer one is skipped with a warning and set
  aside, or with `strict_checkpoints` raises checkpoints.CheckpointDamaged.
  Returns the last logged metrics (host floats) with the final "step".

  Raises:
    WorkdirError: the workdir is in use by another run or cannot be written, or a checkpoint save
      failed (train.py prints these in one line).
  """
  with WorkdirLock(workdir, enabled=jax.process_index() == 0) as lock:
    return _train(config, workdir, lock, strict_checkpoints)


def _train(config: Any, workdir: str, lock: WorkdirLock, strict_checkpoints: bool) -> dict[str, float]:
  run = _prepare(config, workdir, lock, strict_checkpoints)
  compiled = _compile(run)
  with _Preemption() as preempt, _finish_saves_on_error(run.ckpt, run.train_iter):
    step, last = _loop(run, compiled, preempt)
  if step == run.exp.train.num_steps:
    _write_samples(run, step)
  with _finish_saves_on_error(run.ckpt, run.train_iter):
    try:
      run.ckpt.wait_until_finished()
    except (OSError, ValueError, RuntimeError) as e:  # the last async save failed
      raise save_error(e, run.ckpt, step, step) from e
  run.ckpt.close()
  run.writer.close()
  run.train_iter.close()
  last["step"] = step
  return last
