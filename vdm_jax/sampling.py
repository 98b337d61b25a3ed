"""Sampling from a trained U-Net: the jitted sampler used by training and by sample.py.

Joins the model (through train/denoiser.py) and the diffusion core's samplers and guidance;
knows nothing of the training loop. Two levels:

  make_sample_fn / make_chunk_fn   pure functions to jit (the training loop's periodic samples use
                                   the first; sample.py's path runs the second in chunks of steps).
  generate_from_workdir            restore a checkpoint (EMA or raw params) onto the devices present,
                                   rebuild the model from its manifest, sample with guidance, frame
                                   conditioning and autoregressive extension -> (videos, protocol).
  sample_and_save                  the same, then MP4/GIF per sample, grids, an .npz and the protocol
                                   JSON (what sample.py calls).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from vdm_jax import diffusion
from vdm_jax.train.denoiser import frame_condition, make_denoise_fn, null_cond

FRAME_METHODS = ("model", "reconstruction", "replacement")
ChunkFn = Callable[..., jax.Array]
DenoiseFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def make_sample_fn(graphdef: nnx.GraphDef, rest: nnx.State, *, schedule: diffusion.CosineSchedule,
                   sampler_config: diffusion.SamplerConfig, prediction: str = "v",
                   num_classes: int = 0, guidance_weight: float | jax.Array = 0.0
                   ) -> Callable[[nnx.State, jax.Array, jax.Array, dict], jax.Array]:
  """sample_fn(params, rng, z, cond) -> x in [-1, 1], z the initial noise [B, T, H, W, C].

  Guidance (classifier-free, weight w; scalar or per-frame [T]) is applied when w != 0 and the
  model is class- or frame-conditioned. Pure: jit it, with z sharded over the batch axis.
  """
  use_cfg = not (isinstance(guidance_weight, (int, float)) and guidance_weight == 0.0)

  def sample_fn(params: nnx.State, rng: jax.Array, z: jax.Array, cond: dict[str, Any]) -> jax.Array:
    denoise_fn = make_denoise_fn(graphdef, params, rest)
    if use_cfg:
      denoise_fn = diffusion.classifier_free_guidance(
          denoise_fn, guidance_weight, lambda c: null_cond(c, num_classes))
    predict_fn = diffusion.make_predict_fn(denoise_fn, cond, prediction=prediction,
                                           clip_x=sampler_config.clip_x)
    return diffusion.sample_loop(predict_fn, z, rng, schedule=schedule, config=sampler_config)

  return sample_fn


def make_chunk_fn(graphdef: nnx.GraphDef, rest: nnx.State, **kwargs: Any) -> ChunkFn:
  """chunk_fn(params, z, rng, cond, x_known, known_mask, start, stop) for the U-Net (graphdef, rest).

  See `make_chunk_fn_from_denoiser` for the keyword arguments and the chunk_fn's.
  """
  return make_chunk_fn_from_denoiser(lambda params: make_denoise_fn(graphdef, params, rest),
                                     **kwargs)


def make_chunk_fn_from_denoiser(make_denoise: Callable[[Any], DenoiseFn], *,
                                schedule: diffusion.CosineSchedule,
                                sampler_config: diffusion.SamplerConfig, prediction: str = "v",
                                num_classes: int = 0, guidance_weight: float | jax.Array = 0.0,
                                frame_method: str | None = None,
                                reconstruction_weight: float = 0.0) -> ChunkFn:
  """chunk_fn(params, z, rng, cond, x_known, known_mask, start, stop) -> z after steps [start, stop).

  Runs loop iterations [start, stop) of `sampler_config.num_steps` (the last returns x in [-1, 1]);
  start/stop are traced, so one compilation serves every chunk, block and seed of a shape.

  Args:
    make_denoise: params -> denoise_fn(z, logsnr [B], cond) -> prediction (called inside jit).
    schedule, sampler_config, prediction: the diffusion process and the sampler.
    num_classes: the model's class count (the null class for classifier-free guidance).
    guidance_weight: classifier-free w, a scalar or per-frame weights [T]; 0 disables it.
    frame_method: how known frames steer the unknown ones: None or "model" (only through the
      model's conditioning channels, `cond`), "reconstruction" (VDM 3.1 guidance with weight
      `reconstruction_weight`, plus replacement), "replacement" (known frames of z replaced by a
      forward sample after each step).
    reconstruction_weight: w_r for "reconstruction".

  chunk_fn arguments: params (what make_denoise takes), z [B, T, H, W, C] (noise at start 0), rng
  (key), cond (dict of labels [B] / cond_frames / cond_mask), x_known [B, T, H, W, C] in [-1, 1]
  (valid where known), known_mask [B, T] float (1 = known), start / stop int32 scalars.
  """
  if frame_method not in (None,) + FRAME_METHODS:
    raise ValueError(f"frame_method={frame_method!r}; choose one of {FRAME_METHODS}")
  use_cfg = not (isinstance(guidance_weight, (int, float)) and guidance_weight == 0.0)
  guide = frame_method == "reconstruction"
  replace = frame_method in ("reconstruction", "replacement")

  def chunk_fn(params, z, rng, cond, x_known, known_mask, start, stop):
    denoise_fn = make_denoise(params)
    if use_cfg:
      denoise_fn = diffusion.classifier_free_guidance(
          denoise_fn, guidance_weight, lambda c: null_cond(c, num_classes))
    # Reconstruction guidance needs the unclipped x_hat (clipping zeroes its gradient); it clips.
    predict_fn = diffusion.make_predict_fn(denoise_fn, cond, prediction=prediction,
                                           clip_x=sampler_config.clip_x and not guide)
    if guide:
      predict_fn = diffusion.reconstruction_guidance(predict_fn, x_known, known_mask,
                                                     reconstruction_weight,
                                                     clip_x=sampler_config.clip_x)
    post_step_fn = diffusion.replace_known_frames(x_known, known_mask) if replace else None
    return diffusion.sample_loop(predict_fn, z, rng, schedule=schedule, config=sampler_config,
                                 start=start, stop=stop, post_step_fn=post_step_fn)

  return chunk_fn


# ----- Restoring a trained model from a workdir -----

@dataclasses.dataclass(frozen=True)
class RestoredModel:
  """A model restored for sampling.

  Attributes:
    exp: the ExperimentConfig rebuilt from the checkpoint's manifest.
    graphdef, rest: the model's structure and non-trainable state.
    params: EMA or raw parameters, sharded over `mesh`.
    mesh: the (data, fsdp, tensor) mesh over the devices present.
    step: the checkpoint's training step.
    use_ema: whether `params` are the EMA parameters.
    manifest: the checkpoint's manifest.
    samplers: compiled samplers by what their trace depends on, so sampling again with another
      seed (or conditioning) does not compile again.
  """
  exp: Any
  graphdef: nnx.GraphDef
  rest: nnx.State
  params: nnx.State
  mesh: jax.sharding.Mesh
  step: int
  use_ema: bool
  manifest: dict
  samplers: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)


def checkpoint_dir(workdir: str) -> str:
  """workdir/checkpoints, or FileNotFoundError saying what to pass."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory {directory}: pass the --workdir of a training "
                            "run (train.py writes checkpoints into WORKDIR/checkpoints)")
  return directory


def abstract_model(model_config: Any, mesh: jax.sharding.Mesh, seed: int = 0
                   ) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, abstract params with shardings, concrete rest) without allocating parameters."""
  from vdm_jax.model import UNet
  from vdm_jax.parallel import state_shardings
  from vdm_jax.train.state import split_params

  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: UNet(model_config, rngs=nnx.Rngs(seed))))
  abstract_params, _ = split_params(abstract)
  shardings = state_shardings(abstract_params, mesh)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_params, shardings)

  _, abstract_rest = split_params(abstract)
  return graphdef, target, _materialize_rest(abstract_rest, seed)


def _materialize_rest(abstract_rest: nnx.State, seed: int) -> nnx.State:
  """Concrete rng-stream variables (keys from `seed`, counts 0) without compiling the model init.

  They only feed dropout, which sampling turns off. Any other non-Param variable is an error,
  since its value would have to come from the checkpoint.
  """
  def leaf(v: Any) -> Any:
    if isinstance(v, nnx.RngKey):
      return v.replace(jnp.broadcast_to(jax.random.key(seed), v.shape))
    if isinstance(v, nnx.RngCount):
      return v.replace(jnp.zeros(v.shape, v.dtype))
    raise ValueError(f"the model holds a non-trainable {type(v).__name__} {v.shape} that sampling "
                     "does not restore; save it in the checkpoint's params")

  return jax.tree.map(leaf, abstract_rest, is_leaf=lambda x: isinstance(x, nnx.Variable))


def restore_params(directory: str, step: int, target: nnx.State, *, use_ema: bool = True
                   ) -> nnx.State:
  """Restores only the EMA (or raw) parameters of a train-state checkpoint onto target's shardings.

  Args:
    directory: the checkpoint directory (workdir/checkpoints).
    step: a finalized step in it.
    target: abstract params (ShapeDtypeStruct leaves with shardings), e.g. from `abstract_model`.
    use_ema: restore 'ema' (True) or 'params'.

  Raises:
    ValueError: the checkpoint's parameters differ from the target's tree, shapes or dtypes.
  """
  import orbax.checkpoint as ocp

  key = "ema" if use_ema else "params"
  path = os.path.join(directory, str(step), "state")
  with ocp.PyTreeCheckpointer() as ckptr:
    saved = ckptr.metadata(path)
    saved = getattr(saved, "item_metadata", saved)
    saved = getattr(saved, "tree", saved)
    _check_params_match(target, saved.get(key, {}) if hasattr(saved, "get") else {}, key, path)
    restore_args = ocp.checkpoint_utils.construct_restore_args({key: target})
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        item={key: target}, restore_args=restore_args, partial_restore=True))
  return restored[key]


def _flat(tree: Any) -> dict[str, Any]:
  def name(path):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
  return {name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_params_match(target: Any, saved: Any, key: str, path: str) -> None:
  """ValueError naming the first parameter whose presence, shape or dtype differs."""
  want, have = _flat(target), _flat(saved)
  hint = ("The checkpoint does not match the model rebuilt from its manifest: was it written by "
          "another version of the model code? Sample with the code that trained it.")
  if not have:
    raise ValueError(f"checkpoint {path} holds no '{key}' parameters. {hint}")
  for name, t in want.items():
    if name not in have:
      raise ValueError(f"model parameter '{key}/{name}' is missing from checkpoint {path}. {hint}")
    s = have[name]
    if tuple(s.shape) != tuple(t.shape) or np.dtype(s.dtype) != np.dtype(t.dtype):
      raise ValueError(f"model parameter '{key}/{name}' is {tuple(t.shape)} {np.dtype(t.dtype)} "
                       f"but checkpoint {path} holds {tuple(s.shape)} {np.dtype(s.dtype)}. {hint}")
  extra = sorted(set(have) - set(want))
  if extra:
    raise ValueError(f"checkpoint {path} holds '{key}/{extra[0]}' that the model lacks "
                     f"({len(extra)} such parameters). {hint}")


def read_experiment(workdir: str, step: int | None = None) -> tuple[Any, int, dict]:
  """(ExperimentConfig, step, manifest) of checkpoint `step` (latest when None); no array read.

  Raises:
    FileNotFoundError: no checkpoint (or none for `step`) in workdir.
    ValueError: the manifest holds no config.
  """
  from vdm_jax import checkpoints
  from vdm_jax.train.config import ExperimentConfig

  directory = checkpoint_dir(workdir)
  with checkpoints.Checkpointer(directory, create=False, async_save=False) as ckpt:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {directory}: train first (train.py --workdir "
                              f"{workdir}), or pass the --workdir of a run that saved one")
    if step is not None and int(step) not in steps:
      raise FileNotFoundError(f"no checkpoint for step {step} in {directory}; available steps: "
                              f"{steps}")
    step = steps[-1] if step is None else int(step)
    manifest = ckpt.read_manifest(step)
  if "config" not in manifest:
    raise ValueError(f"checkpoint step {step} in {directory} has no config in its manifest, so the "
                     "model cannot be rebuilt; it was not written by vdm_jax's train.py")
  return ExperimentConfig.from_config_dict(manifest["config"]), step, manifest


def restore_model(workdir: str, step: int | None = None, *, use_ema: bool = True,
                  devices: Sequence[jax.Device] | None = None) -> RestoredModel:
  """Rebuilds the model from the manifest of `step` (latest when None) and restores its params.

  The parameters are sharded over a (data=-1, fsdp=1, tensor=1) mesh of `devices` (default all
  present), whatever mesh the checkpoint was saved from.

  Raises:
    FileNotFoundError: no checkpoint (or none for `step`) in workdir.
    ValueError: the checkpoint does not match the model its manifest describes.
  """
  from vdm_jax.parallel import make_mesh

  exp, step, manifest = read_experiment(workdir, step)
  mesh = make_mesh(data=-1, fsdp=1, tensor=1, devices=devices)
  graphdef, target, rest = abstract_model(exp.model, mesh, exp.train.seed)
  params = restore_params(checkpoint_dir(workdir), step, target, use_ema=use_ema)
  return RestoredModel(exp, graphdef, rest, params, mesh, step, use_ema, manifest)


# ----- Generating from a restored model -----

@dataclasses.dataclass(frozen=True)
class GenerateOptions:
  """What generate() samples; every field is a sample.py flag of the same name.

  Attributes:
    num_samples: N videos.
    sampler, num_steps, eta, gamma, corrector_steps, corrector_delta, clip_x: the sampler
      (diffusion.SamplerConfig); num_steps None -> the config's sample.num_steps.
    seed: a sample's initial noise depends only on the seed and its index, so DDIM (eta 0) gives
      the same samples for any batch size and device count; stochastic samplers' step noise also
      depends on the batch size.
    guidance_weight: classifier-free w (class- or frame-conditioned models only); 0 = none.
    guidance_weight_end: if set, w rises linearly over the frames from guidance_weight to this.
    labels: class labels for a class-conditional model, one per sample or one for all; default
      the dataset labels of the conditioning clips, else i % num_classes.
    cond_frames: k known leading frames; None -> train.cond_frames of a frame-conditioned model,
      else 0.
    cond_video: a video file whose first k frames condition every sample; None -> the first N
      clips of the dataset split `cond_split` (default the config's eval split).
    frame_method: "model" (conditioning channels), "reconstruction" or "replacement"; None ->
      "model" for a model with conditioning-frame channels, else "reconstruction".
    reconstruction_weight: w_r of reconstruction guidance (VDM: 50 on BAIR, 9 on Kinetics).
    num_frames: total frames; longer than the training length -> autoregressive extension.
    overlap: frames of the previous block each extension block is conditioned on; None -> the
      cond frames of a frame-conditioned model, else half the training length.
    batch_size: videos per compiled call (rounded up to divide over the devices); None -> N.
    progress_chunks: the step loop runs in this many jitted chunks, logging after each.
  """
  num_samples: int = 8
  sampler: str = "ddim"
  num_steps: int | None = None
  eta: float = 0.0
  gamma: float = 0.0
  corrector_steps: int = 0
  corrector_delta: float = 0.1
  clip_x: bool = True
  seed: int = 0
  guidance_weight: float = 0.0
  guidance_weight_end: float | None = None
  labels: tuple[int, ...] | None = None
  cond_frames: int | None = None
  cond_video: str | None = None
  cond_split: str | None = None
  frame_method: str | None = None
  reconstruction_weight: float = 10.0
  num_frames: int | None = None
  overlap: int | None = None
  batch_size: int | None = None
  progress_chunks: int = 8


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Resolved options: every default filled in and checked against the model."""
  sampler_config: diffusion.SamplerConfig
  train_frames: int  # T, the length of one block
  total_frames: int
  cond_frames: int
  frame_method: str | None
  overlap: int
  batch_size: int
  num_batches: int
  shape: tuple[int, int, int, int]  # [T, H, W, C]


def plan(exp: Any, opts: GenerateOptions, num_devices: int) -> _Plan:
  """Fills in defaults and rejects options the model cannot take, before anything compiles.

  Args:
    exp: the ExperimentConfig the model was trained with.
    opts: what to sample.
    num_devices: devices the batch is split over (the batch is rounded up to a multiple).

  Raises:
    ValueError: naming the option and what to change.
  """
  _check_guidance(exp.model, opts)
  t = exp.data.num_frames
  k, total, method, overlap = _frame_plan(exp, opts)
  sampler_config = diffusion.SamplerConfig(
      opts.sampler, opts.num_steps or exp.sample.num_steps, eta=opts.eta, gamma=opts.gamma,
      clip_x=opts.clip_x, corrector_steps=opts.corrector_steps,
      corrector_delta=opts.corrector_delta)
  if opts.num_samples < 1 or opts.progress_chunks < 1 or (opts.batch_size or 1) < 1:
    raise ValueError(f"num_samples={opts.num_samples}, batch_size={opts.batch_size} and "
                     f"progress_chunks={opts.progress_chunks} must be >= 1")
  batch = min(opts.batch_size or opts.num_samples, opts.num_samples)
  batch = -(-batch // num_devices) * num_devices
  shape = (t, exp.data.resolution, exp.data.resolution, exp.model.out_channels)
  return _Plan(sampler_config, t, total, k, method, overlap, batch,
               -(-opts.num_samples // batch), shape)


def _check_guidance(model: Any, opts: GenerateOptions) -> None:
  """Classifier-free guidance and labels only for models that were trained to take them."""
  conditional = bool(model.num_classes or model.cond_channels)
  if (opts.guidance_weight or opts.guidance_weight_end) and not conditional:
    raise ValueError("classifier-free guidance (guidance_weight != 0) needs a class- or "
                     "frame-conditioned model; this checkpoint's model is unconditional. Set "
                     "--guidance_weight=0 (frame conditioning uses --cond_frames).")
  if opts.labels is not None and not model.num_classes:
    raise ValueError("labels were given but the model is not class-conditional "
                     "(model.num_classes=0); drop --labels")
  if opts.labels is not None:
    bad = [l for l in opts.labels if not 0 <= l < model.num_classes]
    if bad or len(opts.labels) not in (1, opts.num_samples):
      raise ValueError(f"labels must be 1 or num_samples={opts.num_samples} values in "
                       f"[0, {model.num_classes}); got {list(opts.labels)}")


def _frame_plan(exp: Any, opts: GenerateOptions) -> tuple[int, int, str | None, int]:
  """(known frames k, total frames, frame method, extension overlap), defaults filled in."""
  model, t = exp.model, exp.data.num_frames
  k = opts.cond_frames if opts.cond_frames is not None else (
      exp.train.cond_frames if model.cond_channels else 0)
  total = opts.num_frames or t
  if not 0 <= k < t:
    raise ValueError(f"cond_frames={k} must be in [0, {t}) (the model's {t} frames per block)")
  if total <= k:
    raise ValueError(f"num_frames={total} must exceed cond_frames={k}")
  method = opts.frame_method
  if method is None and (k or total > t):
    method = "model" if model.cond_channels else "reconstruction"
  if method is not None and method not in FRAME_METHODS:
    raise ValueError(f"frame_method={method!r}; choose one of {FRAME_METHODS}")
  if method == "model" and not model.cond_channels:
    raise ValueError("frame_method='model' needs a model trained with conditioning-frame channels "
                     "(model.cond_channels > 0); use 'reconstruction' or 'replacement'")
  if method == "reconstruction" and opts.reconstruction_weight < 0:
    raise ValueError(f"reconstruction_weight must be >= 0, got {opts.reconstruction_weight}")
  overlap = opts.overlap or ((exp.train.cond_frames if model.cond_channels else 0) or t // 2)
  if total > t and not 1 <= overlap < t:
    raise ValueError(f"overlap={overlap} must be in [1, {t}) to extend past {t} frames")
  return k, total, method, overlap


def conditioning_clips(exp: Any, opts: GenerateOptions, p: _Plan
                       ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
  """(known [N, k, H, W, C] in [-1, 1], labels [N] or None, ground truth [N, L, ...] or None).

  From `opts.cond_video` (its first k frames, for every sample) or from the first N clips of the
  dataset split. Nothing is read when no frames are known.

  Raises:
    ValueError: the video has fewer than k frames or another resolution.
  """
  n, k = opts.num_samples, p.cond_frames
  if k == 0:
    return None, None, None
  _, h, w, c = p.shape
  if opts.cond_video:
    from vdm_jax.data.preprocess import match_channels
    from vdm_jax.metrics import video_io
    frames = video_io.read_video(opts.cond_video)  # uint8 [T, H, W, 3]
    if frames.shape[0] < k:
      raise ValueError(f"conditioning video {opts.cond_video} has {frames.shape[0]} frames but "
                       f"cond_frames={k} are needed; pass a longer video or lower --cond_frames")
    if frames.shape[1:3] != (h, w):
      raise ValueError(f"conditioning video {opts.cond_video} is {frames.shape[2]}x"
                       f"{frames.shape[1]} but the model samples {w}x{h}; resize it to {w}x{h}")
    if c == 1:
      frames = frames.mean(axis=-1, keepdims=True)
    frames = match_channels(frames[:k], c).astype(np.float32) / 127.5 - 1.0
    return np.broadcast_to(frames, (n,) + frames.shape).copy(), None, None
  from vdm_jax import data
  length = p.total_frames
  info = data.dataset_info(exp.data)
  if not info.num_frames or info.num_frames < length:  # unknown or too short: one block's worth
    length = p.train_frames
  config = dataclasses.replace(exp.data, num_frames=length, image_frames=0,
                               eval_split=opts.cond_split or exp.data.eval_split)
  batch = next(iter(data.create_eval_iterator(config, n, num_examples=n)))
  video = np.asarray(batch["video"], np.float32)
  return video[:, :k], np.asarray(batch["label"], np.int32), video


def _labels(exp: Any, opts: GenerateOptions, data_labels: np.ndarray | None) -> np.ndarray | None:
  """[N] int32 labels for a class-conditional model, else None."""
  num_classes = exp.model.num_classes
  if not num_classes:
    return None
  if opts.labels is not None:
    return np.resize(np.asarray(opts.labels, np.int32), opts.num_samples)
  if data_labels is not None:
    return np.minimum(data_labels, num_classes - 1)
  return np.arange(opts.num_samples, dtype=np.int32) % num_classes


def _global(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A global array from a host array every process holds whole (multi-host safe)."""
  x = np.ascontiguousarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _pad(x: np.ndarray, rows: int) -> np.ndarray:
  """x [n, ...] -> [rows, ...], repeating the last row."""
  return x if len(x) == rows else np.concatenate([x, np.repeat(x[-1:], rows - len(x), 0)])


class _BlockSampler:
  """Samples blocks of T frames, given known frames, with one jitted chunk function."""

  def __init__(self, model: RestoredModel, opts: GenerateOptions, p: _Plan):
    exp = model.exp
    self.model, self.p = model, p
    w = opts.guidance_weight
    if opts.guidance_weight_end is not None:
      w = diffusion.frame_guidance_weights(opts.guidance_weight, opts.guidance_weight_end,
                                           p.train_frames)
    graphdef, rest = model.graphdef, model.rest
    if p.frame_method == "reconstruction" and exp.model.conv_impl == "lax" and (
        jax.default_backend() == "cpu"):
      # Reconstruction guidance differentiates the U-Net w.r.t. its input; XLA CPU runs that
      # gradient of lax.conv 2.6x slower than im2col's (benchmarks/RESULTS.md). Same kernels, same
      # parameter tree: only the graph's conv implementation changes.
      graphdef, _, rest = abstract_model(dataclasses.replace(exp.model, conv_impl="im2col"),
                                         model.mesh, exp.train.seed)
    fn = make_chunk_fn(graphdef, rest, schedule=exp.diffusion.schedule(exp.data.resolution),
                       sampler_config=p.sampler_config, prediction=exp.diffusion.prediction,
                       num_classes=exp.model.num_classes, guidance_weight=w,
                       frame_method=None if p.frame_method == "model" else p.frame_method,
                       reconstruction_weight=opts.reconstruction_weight)
    from vdm_jax.parallel import batch_sharding
    self.sharding = batch_sharding(model.mesh)
    self.chunk_fn = jax.jit(fn, out_shardings=self.sharding)  # z keeps one sharding: one compile
    self.noise_fn = jax.jit(_per_sample_noise, static_argnums=2, out_shardings=self.sharding)
    self.chunk = -(-p.sampler_config.num_steps // opts.progress_chunks)

  def __call__(self, rng: jax.Array, first: int, x_known: np.ndarray, mask: np.ndarray,
               labels: np.ndarray | None, tag: str) -> jax.Array:
    """x [B, T, H, W, C] in [-1, 1] for samples first .. first + B - 1; known frames (mask [B, T]
    = 1) equal x_known. A sample's initial noise depends on the seed and its index only."""
    x_known_g, mask_g = _global(x_known, self.sharding), _global(mask, self.sharding)
    cond = {}
    if labels is not None:
      cond["labels"] = _global(labels, self.sharding)
    if self.model.exp.model.cond_channels:
      cond.update(frame_condition(x_known_g, mask_g))
    rng_noise, rng_loop = jax.random.split(rng)
    z = self.noise_fn(rng_noise, np.int32(first), (self.p.batch_size,) + self.p.shape)
    rng_loop = jax.random.fold_in(rng_loop, first)
    n = self.p.sampler_config.num_steps
    t0 = time.perf_counter()
    for start in range(0, n, self.chunk):
      stop = min(start + self.chunk, n)
      z = self.chunk_fn(self.model.params, z, rng_loop, cond, x_known_g, mask_g,
                        np.int32(start), np.int32(stop))
      z.block_until_ready()
      logging.info("%s: step %d/%d (%.1f s)", tag, stop, n, time.perf_counter() - t0)
    keep = mask_g[:, :, None, None, None] > 0
    return jnp.where(keep, x_known_g, z)

  @property
  def compilations(self) -> int:
    return int(self.chunk_fn._cache_size())  # pylint: disable=protected-access


def _per_sample_noise(rng: jax.Array, first: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """N(0, I) noise [B, ...] whose row i depends only on rng and the sample index first + i."""
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(first + jnp.arange(shape[0]))
  return jax.vmap(lambda key: jax.random.normal(key, shape[1:], jnp.float32))(keys)


def _sample_batch(sampler: _BlockSampler, p: _Plan, rng: jax.Array, first: int,
                  known: np.ndarray | None, labels: np.ndarray | None, tag: str) -> np.ndarray:
  """One batch of full-length videos [B, total, H, W, C]: the first block, then extensions."""
  b, (t, h, w, c) = p.batch_size, p.shape
  x_known = np.zeros((b, t, h, w, c), np.float32)
  mask = np.zeros((b, t), np.float32)
  if known is not None:
    x_known[:, :p.cond_frames], mask[:, :p.cond_frames] = known, 1.0
  num_blocks = 1 if p.total_frames <= t else 1 + -(-(p.total_frames - t) // (t - p.overlap))
  video = _host(sampler(jax.random.fold_in(rng, 0), first, x_known, mask, labels,
                        f"{tag} block 1/{num_blocks}"))
  for block in range(1, num_blocks):
    x_known = np.zeros_like(x_known)
    mask = np.zeros_like(mask)
    x_known[:, :p.overlap], mask[:, :p.overlap] = video[:, -p.overlap:], 1.0
    new = _host(sampler(jax.random.fold_in(rng, block), first, x_known, mask, labels,
                        f"{tag} block {block + 1}/{num_blocks}"))
    video = np.concatenate([video, new[:, p.overlap:]], axis=1)
  return video[:, :p.total_frames]


def _host(x: jax.Array) -> np.ndarray:
  """The whole global array on this host (gathered across processes when there are several)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x), np.float32)


def generate(model: RestoredModel, opts: GenerateOptions) -> tuple[np.ndarray, dict[str, Any]]:
  """Samples `opts.num_samples` videos from a restored model.

  Returns:
    videos: float32 [N, num_frames, H, W, C] in [-1, 1] (on every process).
    protocol: JSON-ready description (checkpoint step, sampler, steps, eta/gamma, w, w_r, seed,
      devices, ...), plus "ground_truth" float [N, L, H, W, C] when the known frames came from a
      dataset split (pop it before writing JSON).
  """
  exp = model.exp
  num_batch_devices = model.mesh.shape["data"] * model.mesh.shape["fsdp"]
  p = plan(exp, opts, num_batch_devices)
  known, data_labels, ground_truth = conditioning_clips(exp, opts, p)
  labels = _labels(exp, opts, data_labels)
  key = (p.sampler_config, p.shape, p.batch_size, p.frame_method, opts.guidance_weight,
         opts.guidance_weight_end, opts.reconstruction_weight, opts.progress_chunks)
  if key not in model.samplers:
    model.samplers[key] = _BlockSampler(model, opts, p)
  sampler = model.samplers[key]
  rng = jax.random.key(opts.seed)
  t0 = time.perf_counter()
  batches = []
  for i in range(p.num_batches):
    rows = slice(i * p.batch_size, min((i + 1) * p.batch_size, opts.num_samples))
    batch_known = None if known is None else _pad(known[rows], p.batch_size)
    batch_labels = None if labels is None else _pad(labels[rows], p.batch_size)
    video = _sample_batch(sampler, p, rng, rows.start, batch_known, batch_labels,
                          f"batch {i + 1}/{p.num_batches}")
    batches.append(video[:rows.stop - rows.start])
  videos = np.concatenate(batches)
  protocol = _protocol(model, opts, p, labels, time.perf_counter() - t0, sampler.compilations)
  if ground_truth is not None:
    protocol["ground_truth"] = ground_truth
  return videos, protocol


def _protocol(model: RestoredModel, opts: GenerateOptions, p: _Plan, labels: np.ndarray | None,
              seconds: float, compilations: int) -> dict[str, Any]:
  sc = p.sampler_config
  protocol = {
      "checkpoint_step": model.step, "use_ema": model.use_ema, "sampler": sc.sampler,
      "num_steps": sc.num_steps, "eta": sc.eta, "gamma": sc.gamma, "clip_x": sc.clip_x,
      "corrector_steps": sc.corrector_steps, "corrector_delta": sc.corrector_delta,
      "guidance_weight": opts.guidance_weight, "guidance_weight_end": opts.guidance_weight_end,
      "frame_method": p.frame_method, "cond_frames": p.cond_frames,
      "reconstruction_weight": opts.reconstruction_weight if p.frame_method == "reconstruction"
                               else None,
      "cond_source": None if not p.cond_frames else (
          os.path.abspath(opts.cond_video) if opts.cond_video else
          f"{model.exp.data.name}/{opts.cond_split or model.exp.data.eval_split}"),
      "num_frames": p.total_frames, "train_num_frames": p.train_frames,
      "overlap": p.overlap if p.total_frames > p.train_frames else None,
      "resolution": p.shape[1], "fps": model.exp.sample.fps, "seed": opts.seed, "num_samples": opts.num_samples,
      "batch_size": p.batch_size, "labels": None if labels is None else labels.tolist(),
      "devices": {"count": jax.device_count(), "platform": jax.devices()[0].platform,
                  "kind": jax.devices()[0].device_kind, "processes": jax.process_count()},
      "mesh": {k: int(v) for k, v in model.mesh.shape.items()},
      "compilations": compilations, "seconds": round(seconds, 3),
  }
  return protocol


def generate_from_workdir(workdir: str, num_samples: int = 8, *, sampler: str = "ddim",
                          num_steps: int | None = None, seed: int = 0, use_ema: bool = True,
                          step: int | None = None, devices: Sequence[jax.Device] | None = None,
                          **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
  """Restores a training run's checkpoint and samples from it (what sample.py and evaluate use).

  Args:
    workdir: the training run's --workdir.
    num_samples, sampler, num_steps, seed: see GenerateOptions.
    use_ema: sample with the EMA parameters (True) or the raw ones.
    step: the checkpoint step; None for the latest.
    devices: the devices to shard the batch over; None for all present.
    **options: any other GenerateOptions field (eta, gamma, guidance_weight, cond_frames, ...).

  Returns:
    (videos float32 [N, T, H, W, C] in [-1, 1], protocol dict); see `generate`.

  Raises:
    FileNotFoundError: no checkpoint (for `step`) in workdir, or no conditioning video file.
    ValueError: an option the model cannot take, a checkpoint that does not match its model, or a
      conditioning video of the wrong length or resolution.
  """
  known = {f.name for f in dataclasses.fields(GenerateOptions)}
  unknown = sorted(set(options) - known)
  if unknown:
    raise ValueError(f"unknown sampling options {unknown}; known: {sorted(known)}")
  if options.get("labels") is not None:
    options["labels"] = tuple(int(l) for l in options["labels"])
  opts = GenerateOptions(num_samples=num_samples, sampler=sampler, num_steps=num_steps, seed=seed,
                         **options)
  if opts.cond_video and not os.path.isfile(opts.cond_video):
    raise FileNotFoundError(f"no conditioning video at {opts.cond_video!r}")
  exp, step, _ = read_experiment(workdir, step)
  plan(exp, opts, len(devices or jax.devices()))  # option errors before reading any array
  model = restore_model(workdir, step, use_ema=use_ema, devices=devices)
  videos, protocol = generate(model, opts)
  protocol = {"workdir": os.path.abspath(workdir), **protocol}
  return videos, protocol


def default_output_dir(workdir: str, protocol: dict[str, Any]) -> str:
  """workdir/samples/sample_<step>_<sampler><steps>[_cfg<w>][_<method><k>][_T<frames>]_seed<seed>.

  Sampler, steps, guidance, frame conditioning, length and seed are in the name, so such runs
  don't overwrite each other; other options (eta, gamma, labels, ...) need --output_dir.
  """
  parts = [f"sample_{protocol['checkpoint_step']:08d}", f"{protocol['sampler']}{protocol['num_steps']}"]
  if protocol.get("guidance_weight"):
    parts.append(f"cfg{protocol['guidance_weight']:g}")
  if protocol.get("cond_frames"):
    parts.append(f"{protocol['frame_method']}{protocol['cond_frames']}")
  if protocol.get("num_frames", 0) > protocol.get("train_num_frames", 0):
    parts.append(f"T{protocol['num_frames']}")
  parts.append(f"seed{protocol['seed']}")
  return os.path.join(os.path.abspath(workdir), "samples", "_".join(parts))


def sample_and_save(workdir: str, output_dir: str | None = None, *, fps: int | None = None,
                    **kwargs: Any) -> tuple[str, dict[str, Any]]:
  """generate_from_workdir, then (process 0 only) write the run's files into output_dir.

  Files: sample_XXXX.mp4 / .gif per sample, sample_grid.mp4 / .gif, sample_strip.png (the grid
  image), sample.npz (uint8 "videos" [N, T, H, W, C], and "ground_truth" when known frames came
  from a dataset) and protocol.json.

  Args:
    workdir: the training run's --workdir.
    output_dir: where to write; None -> `default_output_dir`.
    fps: frames per second of the video files; None -> the training config's sample.fps.
    **kwargs: generate_from_workdir's arguments.

  Returns:
    (output_dir, protocol without the ground truth).
  """
  videos, protocol = generate_from_workdir(workdir, **kwargs)
  ground_truth = protocol.pop("ground_truth", None)
  output_dir = output_dir or default_output_dir(workdir, protocol)
  protocol["output_dir"] = os.path.abspath(output_dir)
  if jax.process_index() != 0:
    return output_dir, protocol
  from vdm_jax.metrics import video_io
  from vdm_jax.versions import library_versions
  written = video_io.save_videos(output_dir, videos, fps=fps or protocol["fps"])
  arrays = {"videos": video_io.to_uint8(videos)}
  if ground_truth is not None:
    arrays["ground_truth"] = video_io.to_uint8(ground_truth)
  np.savez_compressed(written["npz"], **arrays)
  protocol["library_versions"] = library_versions()
  with open(os.path.join(output_dir, "protocol.json"), "w") as f:
    json.dump(protocol, f, indent=2)
  logging.info("wrote %d samples %s to %s", len(videos), list(videos.shape[1:]), output_dir)
  return output_dir, protocol

