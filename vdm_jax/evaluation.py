"""Evaluation: generated videos against a dataset split, every number with its protocol.

The orchestrator on top of generation/ (sampling a workdir) and metrics/ (FVD, frame metrics,
colour drift, video files); scripts/evaluate.py calls `evaluate`.

The pieces scripts/evaluate.py strings together: load or generate videos, summarise the real split in
one streaming pass (I3D statistics cached per dataset, split and protocol; colour drift; the ground
truth for frame prediction), compute the metrics, write a results JSON with a one-line summary.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from vdm_jax import data
from vdm_jax.generation import generate_from_workdir
from vdm_jax.metrics import frame_metrics, temporal, video_io
from vdm_jax.metrics import fvd as fvd_lib
from vdm_jax.versions import library_versions

FRAME_METRIC_NAMES = ("psnr", "ssim", "lpips")
ALL_METRICS = ("fvd", "colour_drift") + FRAME_METRIC_NAMES + temporal.TEMPORAL_METRICS


# ----- Generated videos -----

def load_videos(path: str, max_videos: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
  """Reads generated videos from an .npz or a folder of video files.

  Args:
    path: an .npz with key "videos" (uint8 [N, T, H, W, C] or float in [-1, 1]; optional key
      "ground_truth" [N', T, H, W, C] for frame prediction), or a folder of .mp4/.gif/... files of one
      shape (grid files named *_grid.* are skipped).
    max_videos: keep the first n.

  Returns:
    (videos uint8 [N, T, H, W, C], ground_truth uint8 or None).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"No samples at {path!r}: give an .npz with key 'videos' or a folder of videos.")
  ground_truth = None
  if os.path.isdir(path):
    files = video_io.list_video_files(path)
    if not files:
      raise FileNotFoundError(f"No video files ({', '.join(video_io.VIDEO_EXTENSIONS)}) in {path!r}.")
    files = video_io.one_format(files)
    files = files[:max_videos] if max_videos else files
    videos = [video_io.read_video(f) for f in files]
    shapes = {v.shape for v in videos}
    if len(shapes) != 1:
      raise ValueError(f"Videos in {path!r} differ in shape {sorted(shapes)}; evaluate one shape at a time.")
    videos = np.stack(videos)
  else:
    with np.load(path) as data:
      if "videos" not in data:
        raise ValueError(f"{path!r} has no 'videos' array (keys: {list(data.keys())}).")
      videos = data["videos"]
      if "ground_truth" in data:
        ground_truth = video_io.to_uint8(data["ground_truth"])
    videos = videos[:max_videos] if max_videos else videos
  videos = video_io.to_uint8(videos)
  if videos.ndim != 5:
    raise ValueError(f"Expected videos [N, T, H, W, C] in {path!r}, got shape {videos.shape}.")
  return videos, ground_truth


# ----- Real videos -----

def dataset_batches(data_config: Any, num_videos: int, batch_size: int = 16) -> Iterator[np.ndarray]:
  """uint8 [b, T, H, W, C] batches of the first num_videos of the eval split (padding dropped).

  Args:
    data_config: a vdm_jax.data.DataConfig.
    num_videos: videos to read.
    batch_size: videos per batch.
  """
  for batch in data.create_eval_iterator(data_config, batch_size, num_examples=num_videos):
    yield video_io.to_uint8(np.asarray(batch["video"])[np.asarray(batch["valid"])])


@dataclasses.dataclass
class RealSummary:
  """What the metrics need from the real split, gathered in one streaming pass.

  Attributes:
    count: real videos seen.
    shape: (T, H, W, C) of one video.
    fvd_stats: I3D logit statistics (None when FVD is off).
    colour_drift: mean colour drift of the real videos (None when off).
    temporal: {name: mean over real videos} of every temporal metric (None when off).
    first: the first `keep_first` videos, uint8 [n, T, H, W, C] (ground truth for prediction).
    cache_hit: the FVD statistics came from the cache.
  """
  count: int
  shape: tuple[int, ...]
  fvd_stats: fvd_lib.FeatureStats | None = None
  colour_drift: float | None = None
  temporal: dict[str, float] | None = None
  first: np.ndarray | None = None
  cache_hit: bool = False


def summarize_real(batches: Iterable[np.ndarray], *, extractor: fvd_lib.I3DFeatureExtractor | None = None,
                   colour_drift: bool = True, keep_first: int = 0, temporal_metrics: bool = False,
                   expected_shape: tuple[int, ...] | None = None) -> RealSummary:
  """One pass over real batches (uint8 or float [-1, 1], [b, T, H, W, C]).

  Args:
    batches: the real videos.
    extractor: I3D feature extractor; None skips FVD statistics.
    colour_drift: compute the real colour drift; temporal_metrics: the real metrics.temporal ones.
    keep_first: keep this many leading videos (ground truth for frame prediction).
    expected_shape: (T, H, W, C) of the generated videos, checked on the first batch (before the I3D).
  """
  feats, drifts, kept, count, shape, stats = [], [], [], 0, None, []
  for batch in batches:
    batch = video_io.to_uint8(np.asarray(batch))
    if batch.shape[0] == 0:
      continue
    if shape is None:
      shape = batch.shape[1:]
      if expected_shape is not None:
        check_comparable(expected_shape, shape)
    if extractor is not None:
      feats.append(extractor(batch))
    if colour_drift:
      drifts.append(np.asarray(frame_metrics.colour_drift(frame_metrics.to_unit(batch))))
    if temporal_metrics:
      stats.append(temporal.video_stats(batch))
    if count < keep_first:
      kept.append(batch[:keep_first - count])
    count += batch.shape[0]
  if count == 0:
    raise ValueError("The real split gave no videos; check --dataset, --split and --data_dir.")
  return RealSummary(
      count=count, shape=tuple(shape),
      fvd_stats=fvd_lib.feature_statistics(np.concatenate(feats)) if feats else None,
      colour_drift=float(np.concatenate(drifts).mean()) if drifts else None,
      temporal=temporal.mean_over_videos(stats) if stats else None,
      first=np.concatenate(kept) if kept else None)


# ----- Metrics -----

def check_comparable(generated_shape: tuple[int, ...], real_shape: tuple[int, ...]) -> None:
  """Generated and real videos must share frames, size and channels [T, H, W, C]."""
  if tuple(generated_shape) != tuple(real_shape):
    raise ValueError(f"Generated videos are [T, H, W, C] = {tuple(generated_shape)} but the real ones are "
                     f"{tuple(real_shape)}; set --num_frames / --frame_stride / --resolution to match "
                     "the samples.")


def compute_metrics(generated: np.ndarray, real: RealSummary, *, metrics: Iterable[str] = ALL_METRICS,
                    extractor: fvd_lib.I3DFeatureExtractor | None = None,
                    ground_truth: np.ndarray | None = None, num_cond_frames: int = 0,
                    best_of_k: int = 1) -> dict[str, float]:
  """Every requested metric of generated videos against the real summary.

  Args:
    generated: uint8 [M, T, H, W, C]; for frame prediction M = N * best_of_k, the k samples of
      ground-truth video i at rows i*k .. i*k + k - 1.
    real: from summarize_real.
    metrics: subset of ALL_METRICS.
    extractor: I3D extractor (needed for "fvd").
    ground_truth: uint8 [N, T, H, W, C] for PSNR / SSIM / LPIPS.
    num_cond_frames: leading frames given to the sampler, excluded from frame metrics.
    best_of_k: samples per ground-truth video.
  """
  metrics = tuple(metrics)
  out: dict[str, float] = {}
  if "fvd" in metrics:
    out["fvd"] = fvd_lib.fvd_from_stats(real.fvd_stats, fvd_lib.feature_statistics(extractor(generated)))
  if "colour_drift" in metrics:
    gen = float(np.asarray(frame_metrics.colour_drift(frame_metrics.to_unit(generated))).mean())
    out.update(colour_drift_generated=gen, colour_drift_real=real.colour_drift,
               colour_drift_ratio=gen / real.colour_drift if real.colour_drift else float("nan"))
  out.update(temporal.against_real(generated, real.temporal, metrics))  # {} when none is asked for
  frame_names = tuple(m for m in metrics if m in FRAME_METRIC_NAMES)
  if frame_names:
    n = generated.shape[0] // best_of_k
    samples = generated[:n * best_of_k].reshape(n, best_of_k, *generated.shape[1:])
    res = frame_metrics.frame_prediction_metrics(samples, ground_truth[:n], num_cond_frames=num_cond_frames,
                                                 metrics=frame_names)
    out.update({k: v for k, v in res.items() if k not in ("k", "predicted_frames", "num_videos")})
  return out


def validate_request(metrics: Iterable[str], num_generated: int, num_frames: int, *, best_of_k: int = 1,
                     num_ground_truth: int | None = None) -> None:
  """Raises ValueError for a request that cannot work, before anything expensive runs."""
  unknown = set(metrics) - set(ALL_METRICS)
  if unknown:
    raise ValueError(f"Unknown metrics {sorted(unknown)}; choose from {list(ALL_METRICS)}.")
  if "fvd" in metrics:
    if num_frames < 9:
      raise ValueError(f"FVD needs clips of at least 9 frames (the I3D returns NaN below), got {num_frames}; "
                       "drop fvd from --metrics or use longer clips.")
    if num_generated < 2:
      raise ValueError("FVD needs at least 2 generated videos (a covariance); raise --num_samples.")
  if best_of_k < 1 or num_generated % best_of_k:
    raise ValueError(f"--best_of_k={best_of_k} must divide the number of generated videos ({num_generated}).")
  if set(metrics) & set(FRAME_METRIC_NAMES) and num_ground_truth is not None \
      and num_ground_truth < num_generated // best_of_k:
    raise ValueError(f"Frame prediction needs {num_generated // best_of_k} ground-truth videos, "
                     f"got {num_ground_truth}.")


# ----- Results -----

def _fmt(value: Any) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_line(metrics: Mapping[str, float], protocol: Mapping[str, Any]) -> str:
  """One line: the numbers, then what they were measured on."""
  gen, real = protocol.get("generated", {}), protocol.get("real", {})
  numbers = ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if not k.endswith("_mean_over_samples"))
  t, h, w, _ = gen.get("shape", (None,) * 4)
  how = [f"{gen.get('count')} generated vs {real.get('count')} real "
         f"{real.get('dataset')}/{real.get('split')}",
         f"{t} frames stride {real.get('frame_stride')} at {h}x{w}"]
  if gen.get("sampler"):
    how.append(f"{gen.get('sampler')} {gen.get('num_steps')} steps, EMA {gen.get('use_ema')}, "
               f"step {gen.get('checkpoint_step')}, seed {gen.get('seed')}")
  if protocol.get("frame_prediction"):
    fp = protocol["frame_prediction"]
    how.append(f"prediction {fp['num_cond_frames']} -> {fp['predicted_frames']} frames, "
               f"best of {fp['best_of_k']}")
  return f"{numbers} ({'; '.join(how)})"


def write_results(path: str, metrics: Mapping[str, float], protocol: Mapping[str, Any]) -> dict[str, Any]:
  """Writes {"summary", "metrics", "protocol"} as JSON (protocol gets versions, command and time)."""
  protocol = {**protocol, "library_versions": library_versions(), "command": list(sys.argv),
              "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  results = {"summary": summary_line(metrics, protocol), "metrics": dict(metrics), "protocol": protocol}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2, sort_keys=False, default=_json_default)
  return results


def _json_default(value: Any) -> Any:
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, (np.ndarray, tuple)):
    return list(np.asarray(value).tolist())
  return str(value)


# ----- The whole evaluation -----

def evaluate(data_config: Any, *, samples: str | None = None, workdir: str | None = None,
             num_samples: int | None = None, num_real: int | None = None,
             metrics: Iterable[str] = ("fvd", "colour_drift"), output: str | None = None,
             cache_dir: str | None = None, batch_size: int = 16, best_of_k: int = 1,
             num_cond_frames: int = 0, sampler: str = "ddim", num_steps: int = 128, seed: int = 0,
             use_ema: bool = True, extractor: fvd_lib.I3DFeatureExtractor | None = None,
             real_batches: Iterable[np.ndarray] | None = None) -> dict[str, Any]:
  """Generated videos (from `samples` or sampled from `workdir`) against the eval split of data_config.

  Args:
    data_config: vdm_jax.data.DataConfig of the real videos (name, eval_split, frames, stride, size).
    samples: .npz (key "videos", optional "ground_truth") or folder of video files.
    workdir: a training workdir to sample from instead (vdm_jax.generation.generate_from_workdir).
    num_samples: generated videos to use (all in `samples` when None; required with workdir).
    num_real: real videos; default the number of generated videos / best_of_k for frame prediction,
      else the number of generated videos.
    metrics: subset of ALL_METRICS.
    output: results JSON path; default beside the samples (or in workdir) as eval_results.json.
    cache_dir: where real FVD statistics are cached; None disables the cache.
    batch_size: videos per I3D / data batch.
    best_of_k: samples per ground-truth video (frame prediction).
    num_cond_frames: leading frames that were given, not generated.
    sampler, num_steps, seed, use_ema: passed to the sampler with workdir.
    extractor: I3D extractor to reuse (tests); default one over all local devices.
    real_batches: real videos to use instead of reading data_config (tests).

  Returns:
    The results dict written to `output`.
  """
  metrics = tuple(metrics)
  generated, ground_truth, protocol = _generated(data_config, samples, workdir, num_samples,
                                                 sampler=sampler, num_steps=num_steps, seed=seed,
                                                 use_ema=use_ema)
  prediction = bool(set(metrics) & set(FRAME_METRIC_NAMES))
  num_truth_needed = generated.shape[0] // max(best_of_k, 1)
  validate_request(metrics, generated.shape[0], generated.shape[1], best_of_k=best_of_k,
                   num_ground_truth=None if ground_truth is None else ground_truth.shape[0])
  num_real = num_real or (num_truth_needed if prediction else generated.shape[0])
  protocol["real"] = _real_protocol(data_config, num_real)
  if "fvd" in metrics:
    extractor = extractor or fvd_lib.I3DFeatureExtractor(batch_size=batch_size)
  real = _real_summary(data_config, protocol["real"], metrics, extractor, cache_dir, batch_size,
                       keep_first=num_truth_needed if prediction and ground_truth is None else 0,
                       real_batches=real_batches, expected_shape=generated.shape[1:])
  check_comparable(generated.shape[1:], real.shape)
  if prediction and ground_truth is None:
    ground_truth = real.first
  protocol.update(_metric_protocols(metrics, real, cache_dir, generated.shape[1],
                                    num_cond_frames, best_of_k))
  values = compute_metrics(generated, real, metrics=metrics, extractor=extractor,
                           ground_truth=ground_truth, num_cond_frames=num_cond_frames,
                           best_of_k=best_of_k)
  if output is None:
    base = workdir if workdir is not None else (
        samples if os.path.isdir(samples) else os.path.dirname(samples))
    output = os.path.join(base or ".", "eval_results.json")
  results = write_results(output, values, protocol)
  results["path"] = output
  return results


def _generated(data_config: Any, samples: str | None, workdir: str | None,
               num_samples: int | None, **sampling: Any
               ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
  """(generated uint8 [N, T, H, W, C], ground truth or None, protocol with "generated")."""
  if (samples is None) == (workdir is None):
    raise ValueError("Give exactly one of --samples PATH or --workdir DIR.")
  if samples is not None:
    generated, ground_truth = load_videos(samples, num_samples)
    generated = video_io.match_resolution(generated, data_config.resolution)
    gen = {"source": os.path.abspath(samples)}
  else:
    if not num_samples:
      raise ValueError("--workdir needs --num_samples N (videos to generate).")
    # As many frames as the real clips: longer than the model's clips means extension.
    videos, gen_protocol = generate_from_workdir(workdir, num_samples=num_samples,
                                                 num_frames=data_config.num_frames, **sampling)
    generated = video_io.to_uint8(videos)
    ground_truth = gen_protocol.pop("ground_truth", None)
    ground_truth = None if ground_truth is None else video_io.to_uint8(np.asarray(ground_truth))
    gen = {"source": os.path.abspath(workdir), **sampling, **gen_protocol}
  gen.update(count=int(generated.shape[0]), shape=list(generated.shape[1:]))
  return generated, ground_truth, {"generated": gen}


def _real_protocol(data_config: Any, num_real: int) -> dict[str, Any]:
  return {"dataset": data_config.name, "split": data_config.eval_split, "count": int(num_real),
          "num_frames": data_config.num_frames, "frame_stride": data_config.frame_stride,
          "resolution": data_config.resolution,
          "order": "first N of the split, clips from frame 0"}


def _metric_protocols(metrics: tuple[str, ...], real: RealSummary, cache_dir: str | None,
                      num_frames: int, num_cond_frames: int, best_of_k: int) -> dict[str, Any]:
  """How each requested metric was measured, for the results JSON."""
  out: dict[str, Any] = {}
  if "fvd" in metrics:
    out["fvd"] = {**fvd_lib.PROTOCOL, "real_stats_cache_hit": real.cache_hit,
                  "real_stats_cache_dir": cache_dir}
  if set(metrics) & set(FRAME_METRIC_NAMES):
    out["frame_prediction"] = {
        "ground_truth": ("samples file" if real.first is None
                         else "first videos of the real split, in order"),
        "num_cond_frames": num_cond_frames, "predicted_frames": num_frames - num_cond_frames,
        "best_of_k": best_of_k,
        "values": "[0, 1], PSNR max_val 1, SSIM gaussian 11/1.5, LPIPS alexnet",
        "selection": "per video and metric, the best sample by its mean over predicted frames"}
  if "colour_drift" in metrics:
    out["colour_drift"] = {"definition": "mean over frames of ||m_{t+1} - m_t||_2, m = per-frame "
                                         "mean colour in [0, 1]; mean over videos"}
  out.update({"temporal": temporal.PROTOCOL} if set(metrics) & set(temporal.TEMPORAL_METRICS) else {})
  return out


def _real_summary(data_config: Any, real_protocol: Mapping[str, Any], metrics: tuple[str, ...],
                  extractor: fvd_lib.I3DFeatureExtractor | None, cache_dir: str | None, batch_size: int,
                  keep_first: int, real_batches: Iterable[np.ndarray] | None,
                  expected_shape: tuple[int, ...] | None = None) -> RealSummary:
  """The real-split summary, from the cache when its protocol matches (and no ground truth is needed)."""
  cache_protocol = {**real_protocol, **fvd_lib.PROTOCOL}
  path, wants_temporal = None, bool(set(metrics) & set(temporal.TEMPORAL_METRICS))
  if cache_dir and "fvd" in metrics:
    path = fvd_lib.stats_cache_path(cache_dir, data_config.name, data_config.eval_split, cache_protocol)
    cached = fvd_lib.load_stats(path, cache_protocol)
    drift_ok = "colour_drift" not in metrics or (
        cached is not None and cached.extra.get("colour_drift") is not None)
    stored = temporal.from_cache_extra(cached.extra) if cached is not None else None
    if cached is not None and keep_first == 0 and drift_ok and (stored or not wants_temporal):
      return RealSummary(count=cached.count, shape=tuple(cached.extra["shape"]), fvd_stats=cached,
                         colour_drift=cached.extra.get("colour_drift"), temporal=stored, cache_hit=True)
  if real_batches is None:
    real_batches = dataset_batches(data_config, int(real_protocol["count"]), batch_size)
  real = summarize_real(real_batches, extractor=extractor if "fvd" in metrics else None,
                        colour_drift="colour_drift" in metrics, keep_first=keep_first,
                        temporal_metrics=wants_temporal, expected_shape=expected_shape)
  if path is not None:
    fvd_lib.save_stats(path, real.fvd_stats, cache_protocol,
                       extra={"shape": list(real.shape), "colour_drift": real.colour_drift,
                              **temporal.cache_extra(real.temporal)})
  return real
