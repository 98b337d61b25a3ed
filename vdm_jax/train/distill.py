"""Progressive distillation in the trainer (Salimans & Ho 2022): the teacher, the student's start and
the pure distillation train step.

When the config's `distill` section names a teacher workdir, train.loop calls `prepare`: the teacher's
EMA parameters are restored onto the student's parameter shardings (any mesh), a fresh student starts
from them (params and EMA; the optimizer starts anew), and the train step is `make_distill_step`'s:
diffusion.distillation_loss (two teacher DDIM steps -> the student's x target, truncated-SNR weight)
inside step.gradient_step, which the ordinary step shares (accumulation, optimizer, EMA, non-finite
guard). The teacher's parameters are the step's third argument, so they are not constants of the
compiled program and are not saved in the student's checkpoints. A resumed round restores the
student from its own workdir and the teacher from the step its manifest recorded.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vdm_jax import checkpoints
from vdm_jax.config import ConfigError, ExperimentConfig
from vdm_jax.denoiser import make_denoise_fn
from vdm_jax.diffusion import CosineSchedule, distillation_loss
from vdm_jax.train.state import TrainState, start_from_params
from vdm_jax.train.step import gradient_step, training_condition
from vdm_jax.train.workdir import check_workdir_compatible


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A restored teacher: its EMA parameters and where they came from."""
  params: nnx.State
  workdir: str
  step: int
  round: int  # the student's round: 1 for a student of an ordinary run, the teacher's round + 1 after

  def manifest_entry(self, student_steps: int) -> dict:
    """What the student's manifest records under "distill"."""
    return {"teacher_workdir": self.workdir, "teacher_step": self.step, "round": self.round,
            "student_steps": int(student_steps), "teacher_steps": 2 * int(student_steps)}


def load_teacher(exp: ExperimentConfig, params: nnx.State, resumed: dict | None = None) -> Teacher:
  """Restores the teacher of `exp.distill` onto the shardings of the student's `params`.

  Args:
    exp: the student's config (its distill section names the teacher).
    params: the student's (concrete, sharded) parameters: the restore target's tree and shardings.
    resumed: the manifest of the student checkpoint being resumed, if any: its teacher step is kept.

  Raises:
    ConfigError: the teacher's model, diffusion or data differ from the student's, or a distilled
      teacher is not for twice the student's steps.
  """
  cfg = exp.distill
  step = None if cfg.teacher_step == -1 else cfg.teacher_step
  if resumed and resumed.get("distill"):
    step = int(resumed["distill"]["teacher_step"])
  _, step, manifest = checkpoints.read_experiment(cfg.teacher_workdir, step, fallback=step is None)
  try:
    check_workdir_compatible(manifest, exp, cfg.teacher_workdir)
  except ValueError as err:
    raise ConfigError(f"distill.teacher_workdir: the student must have its teacher's model, "
                      f"diffusion and data; {err}") from err
  prior = manifest.get("distill") or {}
  if prior and int(prior["student_steps"]) != 2 * cfg.student_steps:
    raise ConfigError(f"distill.student_steps={cfg.student_steps}: the teacher in "
                      f"{cfg.teacher_workdir} is a student for {prior['student_steps']} steps, so "
                      f"its student is for {int(prior['student_steps']) // 2}; set that")
  target = checkpoints.abstract_like(params, jax.tree.map(lambda x: x.sharding, params))
  teacher_params = checkpoints.restore_params(cfg.teacher_workdir, step, target, use_ema=True)
  return Teacher(teacher_params, os.path.abspath(cfg.teacher_workdir), int(step),
                 int(prior.get("round", 0)) + 1)


def start_from_teacher(state: TrainState, teacher: Teacher) -> TrainState:
  """A fresh student: params and EMA copies of the teacher's."""
  return start_from_params(state, teacher.params)


def make_distill_step(graphdef: nnx.GraphDef, rest: nnx.State, tx: optax.GradientTransformation,
                      lr_schedule: optax.Schedule, *, exp: ExperimentConfig, schedule: CosineSchedule
                      ) -> Callable[[TrainState, dict, nnx.State], tuple[TrainState, dict]]:
  """train_step(state, batch, teacher_params) -> (state, metrics); pure, for jax.jit (donate state).

  The teacher runs deterministically on the conditioning the student gets (class and frame dropout
  for classifier-free guidance included) and its x_hat is clipped as exp.sample.clip_x says.
  """
  model_cfg = exp.model

  def loss_fn(params, micro, rng, teacher_params):
    k_cond, k_drop, k_loss = jax.random.split(rng, 3)
    cond, frame_mask = training_condition(micro, k_cond, model_cfg, exp.train, exp.cascade)
    student = make_denoise_fn(graphdef, params, rest, deterministic=model_cfg.dropout == 0,
                              dropout_rng=k_drop)
    teacher = make_denoise_fn(graphdef, teacher_params, rest)
    loss, aux = distillation_loss(student, teacher, micro["video"], k_loss, cond,
                                  num_steps=exp.distill.student_steps, schedule=schedule,
                                  prediction=exp.diffusion.prediction, clip_x=exp.sample.clip_x,
                                  frame_mask=frame_mask)
    return jnp.mean(loss), jnp.mean(aux["x_mse"])

  return gradient_step(jax.value_and_grad(loss_fn, has_aux=True), tx, lr_schedule, exp.optim)


def prepare(exp: ExperimentConfig, graphdef: nnx.GraphDef, rest: nnx.State,
            tx: optax.GradientTransformation, lr_schedule: optax.Schedule, schedule: CosineSchedule,
            state: TrainState, resumed: dict | None) -> tuple[TrainState, Callable, tuple[Any], dict]:
  """(state, train step, its extra arguments (the teacher's params), the manifest's "distill").

  `resumed`: the manifest of the restored student checkpoint, or None for a fresh student (which
  then starts from the teacher).
  """
  _check_resumed(exp, resumed)
  teacher = load_teacher(exp, state["params"], resumed)
  if resumed is None:
    state = start_from_teacher(state, teacher)
  step_fn = make_distill_step(graphdef, rest, tx, lr_schedule, exp=exp, schedule=schedule)
  return state, step_fn, (teacher.params,), teacher.manifest_entry(exp.distill.student_steps)


def _check_resumed(exp: ExperimentConfig, resumed: dict | None) -> None:
  """A resumed workdir must hold a student of the same step count (ConfigError otherwise)."""
  if resumed is None:
    return
  saved = resumed.get("distill")
  if not saved:
    raise ConfigError("the workdir holds an ordinary training run, not a distillation student; "
                      "use a new --workdir for the student (distill.teacher_workdir names the teacher)")
  if int(saved["student_steps"]) != exp.distill.student_steps:
    raise ConfigError(f"distill.student_steps={exp.distill.student_steps}, but the workdir holds a "
                      f"student for {saved['student_steps']} steps; use a new --workdir per round")
