"""Running generation: a model ready to sample, its restore from a workdir, generate(), writing.

The one path every caller takes: sample.py (sample_and_save), evaluation (generate_from_workdir)
and the trainer's periodic samples (generate on its live EMA parameters, then write_samples).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from vdm_jax import checkpoints, diffusion
from vdm_jax.config import ExperimentConfig
from vdm_jax.denoiser import Conditioning, frame_condition
from vdm_jax.generation.lowres import stage_input
from vdm_jax.generation.plan import (
  GenerateOptions,
  Plan,
  check_cond_video,
  conditioning_clips,
  labels_for,
  options_from,
  plan,
)
from vdm_jax.generation.sampler import make_chunk_fn, per_sample_noise
from vdm_jax.metrics import video_io
from vdm_jax.model import abstract_model
from vdm_jax.parallel import batch_sharding, make_mesh, num_batch_devices
from vdm_jax.versions import library_versions


@dataclasses.dataclass(frozen=True)
class SamplingModel:
  """A model ready to sample: restored from a checkpoint, or the trainer's live EMA.

  Attributes:
    exp: the ExperimentConfig (rebuilt from the checkpoint's manifest when restored).
    graphdef, rest: the model's structure and non-trainable state.
    params: EMA or raw parameters, sharded over `mesh`.
    mesh: the (data, fsdp, tensor) mesh the batch is split over.
    step: the training step of `params`.
    use_ema: whether `params` are the EMA parameters.
    manifest: the checkpoint's manifest ({} for a live model).
    samplers: compiled samplers by what their trace depends on, so sampling again with another
      seed, conditioning or (same-shaped) parameters does not compile again.
  """
  exp: ExperimentConfig
  graphdef: nnx.GraphDef
  rest: nnx.State
  params: nnx.State
  mesh: jax.sharding.Mesh
  step: int
  use_ema: bool = True
  manifest: dict = dataclasses.field(default_factory=dict)
  samplers: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)


def restore_model(workdir: str, step: int | None = None, *, use_ema: bool = True,
                  devices: Sequence[jax.Device] | None = None, fallback: bool = True) -> SamplingModel:
  """Rebuilds the model from the manifest of `step` (latest when None) and restores its params.

  The parameters are sharded over a (data=-1, fsdp=1, tensor=1) mesh of `devices` (default all
  present), whatever mesh the checkpoint was saved from. With `step` None and `fallback`, a damaged
  latest checkpoint is skipped (a warning) for the newest intact one.

  Raises:
    FileNotFoundError: no checkpoint (or none for `step`) in workdir.
    checkpoints.CheckpointDamaged: `step` is damaged (the message lists the intact steps), or
      (`step` None) the latest is and not `fallback`, or every step is.
    ValueError: the checkpoint does not match the model its manifest describes.
  """
  return _restore_model(workdir, step, step is None and fallback, use_ema, devices)


def _restore_model(workdir: str, first: int | None, fallback: bool, use_ema: bool,
                   devices: Sequence[jax.Device] | None) -> SamplingModel:
  """restore_model of step `first` (None: the latest) or, with `fallback`, of an older intact one."""
  mesh = make_mesh(data=-1, fsdp=1, tensor=1, devices=devices)

  def restore(step: int) -> SamplingModel:
    exp, _, manifest = checkpoints.read_experiment(workdir, step)
    graphdef, target, rest = abstract_model(exp.model, mesh, exp.train.seed)
    params = checkpoints.restore_params(workdir, step, target, use_ema=use_ema)
    return SamplingModel(exp, graphdef, rest, params, mesh, step, use_ema, manifest)

  return checkpoints.restore_newest_intact(workdir, restore, step=first, fallback=fallback)


def _global(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A global array from a host array every process holds whole (multi-host safe)."""
  x = np.ascontiguousarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _host(x: jax.Array) -> np.ndarray:
  """The whole global array on this host (gathered across processes when there are several)."""
  if jax.process_count() > 1:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x), np.float32)


def _pad(x: np.ndarray, rows: int) -> np.ndarray:
  """x [n, ...] -> [rows, ...], repeating the last row."""
  return x if len(x) == rows else np.concatenate([x, np.repeat(x[-1:], rows - len(x), 0)])


class _BlockSampler:
  """Samples blocks of T frames, given known frames, with one jitted chunk function."""

  def __init__(self, model: SamplingModel, opts: GenerateOptions, p: Plan):
    exp = model.exp
    self.exp = exp
    self.batch_shape = (p.batch_size,) + p.shape
    self.num_steps = p.sampler_config.num_steps
    self.sampler_config = p.sampler_config
    w = p.guidance_weight
    if opts.guidance_weight_end is not None:
      w = diffusion.frame_guidance_weights(w, opts.guidance_weight_end, p.train_frames)
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
    self.sharding = batch_sharding(model.mesh)
    self.chunk_fn = jax.jit(fn, out_shardings=self.sharding)  # z keeps one sharding: one compile
    self.noise_fn = jax.jit(per_sample_noise, static_argnums=2, out_shardings=self.sharding)
    self.chunk = -(-p.sampler_config.num_steps // opts.progress_chunks)

  def __call__(self, params: nnx.State, rng: jax.Array, first: int, x_known: np.ndarray,
               mask: np.ndarray, labels: np.ndarray | None, tag: str,
               lowres: tuple[np.ndarray, float] | None = None,
               micro: tuple[tuple[str, float], ...] = ()) -> jax.Array:
    """x [B, T, H, W, C] in [-1, 1] for samples first .. first + B - 1; known frames (mask [B, T]
    = 1) equal x_known; lowres: a cascade stage's (noised conditioning [B, T, H, W, C], level);
    micro: (name, value) of each micro-conditioning scalar (the same for every sample; traced, so
    another value does not compile again). A sample's initial noise depends on the seed and its
    index only."""
    x_known_g, mask_g = _global(x_known, self.sharding), _global(mask, self.sharding)
    cond = frame_condition(x_known_g, mask_g) if self.exp.model.cond_channels else Conditioning()
    if labels is not None:
      cond = cond.replace(labels=_global(labels, self.sharding))
    if lowres is not None:
      level = np.full((len(lowres[0]),), lowres[1], np.float32)
      cond = cond.replace(lowres=_global(lowres[0], self.sharding),
                          aug_level=_global(level, self.sharding))
    for name, value in micro:
      cond = cond.replace(**{name: _global(np.full((len(mask),), value, np.float32), self.sharding)})
    rng_noise, rng_loop = jax.random.split(rng)
    z = self.noise_fn(rng_noise, np.int32(first), self.batch_shape)
    z = diffusion.initial_carry(z, self.sampler_config)  # (z, x_prev) for a multistep sampler
    rng_loop = jax.random.fold_in(rng_loop, first)
    n = self.num_steps
    t0 = time.perf_counter()
    for start in range(0, n, self.chunk):
      stop = min(start + self.chunk, n)
      z = self.chunk_fn(params, z, rng_loop, cond, x_known_g, mask_g, np.int32(start),
                        np.int32(stop))
      jax.block_until_ready(z)
      logging.info("%s: step %d/%d (%.1f s)", tag, stop, n, time.perf_counter() - t0)
    z = diffusion.carry_sample(z)
    keep = mask_g[:, :, None, None, None] > 0
    return jnp.where(keep, x_known_g, z)

  @property
  def compilations(self) -> int:
    return int(self.chunk_fn._cache_size())  # pylint: disable=protected-access


def _sample_batch(sampler: _BlockSampler, p: Plan, params: nnx.State, rng: jax.Array, first: int,
                  known: np.ndarray | None, labels: np.ndarray | None, tag: str,
                  lowres: tuple[np.ndarray, float] | None = None) -> np.ndarray:
  """One batch of full-length videos [B, total, H, W, C]: the first block, then extensions."""
  x_known = np.zeros((p.batch_size,) + p.shape, np.float32)
  mask = np.zeros((p.batch_size, p.train_frames), np.float32)
  if known is not None:
    x_known[:, :p.cond_frames], mask[:, :p.cond_frames] = known, 1.0
  video = None
  for block in range(p.num_blocks):
    if block:
      x_known, mask = np.zeros_like(x_known), np.zeros_like(mask)
      x_known[:, :p.overlap], mask[:, :p.overlap] = video[:, -p.overlap:], 1.0
    new = _host(sampler(params, jax.random.fold_in(rng, block), first, x_known, mask, labels,
                        f"{tag} block {block + 1}/{p.num_blocks}", lowres, p.micro))
    video = new if video is None else np.concatenate([video, new[:, p.overlap:]], axis=1)
  return video[:, :p.total_frames]


def generate(model: SamplingModel, opts: GenerateOptions, lowres: np.ndarray | None = None,
             aug_level: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
  """Samples `opts.num_samples` videos from a model.

  A cascade super-resolution stage is conditioned on `lowres` [N, T, H, W, C] (the previous
  stage's output upsampled to its shape; None: degraded eval clips) noised at `aug_level` (None:
  the config's cascade.sample_aug_level); see generation.lowres.

  Returns:
    videos: float32 [N, num_frames, H, W, C] in [-1, 1] (on every process).
    protocol: JSON-ready description (checkpoint step, sampler, steps, eta/gamma, w, w_r, seed,
      devices, ...), plus "ground_truth" float [N, L, H, W, C] when the known frames came from a
      dataset split (pop it before writing JSON).
  """
  exp = model.exp
  p = plan(exp, opts, num_batch_devices(model.mesh.shape), _medians(model.manifest))
  known, data_labels, ground_truth = conditioning_clips(exp, opts, p)
  sr = stage_input(exp, opts, p, lowres, aug_level)
  if sr is not None and sr.ground_truth is not None:
    data_labels, ground_truth = sr.labels, sr.ground_truth
  labels = labels_for(exp, opts, data_labels)
  # What the compiled sampler's trace depends on (not the seed, sample count or video length).
  key = (p.sampler_config, p.guidance_weight, p.shape, p.batch_size, p.frame_method,
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
    batch_lowres = None if sr is None else (_pad(sr.lowres[rows], p.batch_size), sr.aug_level)
    video = _sample_batch(sampler, p, model.params, rng, rows.start, batch_known, batch_labels,
                          f"batch {i + 1}/{p.num_batches}", batch_lowres)
    batches.append(video[:rows.stop - rows.start])
  videos = np.concatenate(batches)
  protocol = _protocol(model, opts, p, labels, time.perf_counter() - t0, sampler.compilations)
  if sr is not None:
    protocol.update(aug_level=sr.aug_level, lowres_source=sr.source)
  if ground_truth is not None:
    protocol["ground_truth"] = ground_truth
  return videos, protocol


def _medians(manifest: dict) -> dict[str, float] | None:
  """The training set's micro-conditioning medians the manifest recorded (None: not recorded)."""
  return (manifest.get("dataset") or {}).get("micro_medians")


def _protocol(model: SamplingModel, opts: GenerateOptions, p: Plan, labels: np.ndarray | None,
              seconds: float, compilations: int) -> dict[str, Any]:
  """The JSON-ready record of what was sampled, how, and on what."""
  exp, reconstruction = model.exp, p.frame_method == "reconstruction"
  cond_source = None
  if p.cond_frames:
    cond_source = (os.path.abspath(opts.cond_video) if opts.cond_video else
                   f"{exp.data.name}/{opts.cond_split or exp.data.eval_split}")
  device = jax.devices()[0]
  return {
      "checkpoint_step": model.step, "use_ema": model.use_ema,
      **dataclasses.asdict(p.sampler_config),
      "guidance_weight": p.guidance_weight, "guidance_weight_end": opts.guidance_weight_end,
      "frame_method": p.frame_method, "cond_frames": p.cond_frames,
      "reconstruction_weight": opts.reconstruction_weight if reconstruction else None,
      "cond_source": cond_source, "num_frames": p.total_frames, "train_num_frames": p.train_frames,
      "overlap": p.overlap if p.total_frames > p.train_frames else None,
      "resolution": p.shape[1], "fps": exp.sample.fps, "seed": opts.seed,
      "num_samples": opts.num_samples, "batch_size": p.batch_size,
      "labels": None if labels is None else labels.tolist(),
      "devices": {"count": jax.device_count(), "platform": device.platform,
                  "kind": device.device_kind, "processes": jax.process_count()},
      "mesh": {k: int(v) for k, v in model.mesh.shape.items()},
      "compilations": compilations, "seconds": round(seconds, 3),
      "micro_conditioning": dict(p.micro),
  }


def generate_from_workdir(workdir: str, num_samples: int = 8, *, use_ema: bool = True,
                          step: int | None = None, devices: Sequence[jax.Device] | None = None,
                          fallback: bool = True, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
  """Restores a training run's checkpoint and samples from it (what sample.py and evaluation use).

  Args:
    workdir: the training run's --workdir.
    num_samples: N videos.
    use_ema: sample with the EMA parameters (True) or the raw ones.
    step: the checkpoint step; None for the latest.
    devices: the devices to shard the batch over; None for all present.
    fallback: with `step` None, sample from the newest intact checkpoint when the latest is damaged
      (a warning); False: raise checkpoints.CheckpointDamaged instead.
    **options: GenerateOptions fields (seed, guidance_weight, cond_frames, ...) and
      diffusion.SamplerConfig fields (sampler, num_steps, eta, ...; None keeps the config's).

  Returns:
    (videos float32 [N, T, H, W, C] in [-1, 1], protocol dict); see `generate`.

  Raises:
    FileNotFoundError: no checkpoint (for `step`) in workdir, or no conditioning video file.
    ValueError: an option the model cannot take, a checkpoint that does not match its model, or a
      conditioning video of the wrong length or resolution; checkpoints.CheckpointDamaged (a
      ValueError): see restore_model.
  """
  exp, first, manifest = checkpoints.read_experiment(workdir, step, fallback=fallback)
  opts = options_from(exp, num_samples=num_samples, **options)
  check_cond_video(opts)
  plan(exp, opts, len(devices or jax.devices()), _medians(manifest))  # option errors, before any array
  model = _restore_model(workdir, first, step is None and fallback, use_ema, devices)
  videos, protocol = generate(model, opts)
  return videos, {"workdir": os.path.abspath(workdir), **protocol}


def default_output_dir(workdir: str, protocol: dict[str, Any]) -> str:
  """workdir/samples/sample_<step>_<sampler><steps>[_cfg<w>][_<method><k>][_T<frames>][_motion<m>]
  [_fps<f>]_seed<seed>.

  Sampler, steps, guidance, frame conditioning, length, micro-conditioning and seed are in the name,
  so such runs don't overwrite each other; other options (eta, gamma, labels, ...) need --output_dir.
  """
  parts = [f"sample_{protocol['checkpoint_step']:08d}",
           f"{protocol['sampler']}{protocol['num_steps']}"]
  if protocol.get("guidance_weight"):
    parts.append(f"cfg{protocol['guidance_weight']:g}")
  if protocol.get("cond_frames"):
    parts.append(f"{protocol['frame_method']}{protocol['cond_frames']}")
  if protocol.get("num_frames", 0) > protocol.get("train_num_frames", 0):
    parts.append(f"T{protocol['num_frames']}")
  parts += [f"{name}{value:g}" for name, value in protocol.get("micro_conditioning", {}).items()]
  parts.append(f"seed{protocol['seed']}")
  return os.path.join(os.path.abspath(workdir), "samples", "_".join(parts))


def write_samples(output_dir: str, videos: np.ndarray, protocol: dict[str, Any], *,
                  ground_truth: np.ndarray | None = None, fps: int | None = None) -> dict[str, str]:
  """Writes a generation run's files (call on process 0 only).

  Files: sample_XXXX.mp4 / .gif per sample, sample_grid.mp4 / .gif, sample_strip.png (the grid
  image), sample.npz (uint8 "videos" [N, T, H, W, C], and "ground_truth" when known frames came
  from a dataset) and protocol.json (with the library versions added).

  Returns:
    the written paths by kind (video_io.save_videos's, plus "protocol").
  """
  written = video_io.save_videos(output_dir, videos, fps=fps or protocol["fps"])
  arrays = {"videos": video_io.to_uint8(videos)}
  if ground_truth is not None:
    arrays["ground_truth"] = video_io.to_uint8(ground_truth)
  np.savez_compressed(written["npz"], **arrays)
  written["protocol"] = os.path.join(output_dir, "protocol.json")
  with open(written["protocol"], "w") as f:
    json.dump({**protocol, "library_versions": library_versions()}, f, indent=2)
  return written


def sample_and_save(workdir: str, output_dir: str | None = None, *, fps: int | None = None,
                    **kwargs: Any) -> tuple[str, dict[str, Any]]:
  """generate_from_workdir, then (process 0 only) `write_samples` into output_dir.

  Args:
    workdir: the training run's --workdir.
    output_dir: where to write; None -> `default_output_dir`.
    fps: frames per second of the video files; None -> the training config's sample.fps. A model
      micro-conditioned on "fps" is also conditioned on it (None: the training set's median).
    **kwargs: generate_from_workdir's arguments.

  Returns:
    (output_dir, protocol without the ground truth).
  """
  if fps is not None and "fps" not in kwargs:
    exp, _, _ = checkpoints.read_experiment(workdir, kwargs.get("step"),
                                            fallback=kwargs.get("fallback", True))
    if "fps" in exp.model.micro_conditioning:
      kwargs["fps"] = float(fps)
  videos, protocol = generate_from_workdir(workdir, **kwargs)
  ground_truth = protocol.pop("ground_truth", None)
  output_dir = output_dir or default_output_dir(workdir, protocol)
  protocol["output_dir"] = os.path.abspath(output_dir)
  if jax.process_index() == 0:
    write_samples(output_dir, videos, protocol, ground_truth=ground_truth, fps=fps)
    logging.info("wrote %d samples %s to %s", len(videos), list(videos.shape[1:]), output_dir)
  return output_dir, protocol
