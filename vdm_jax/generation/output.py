"""Writing generated videos: MP4/GIF per sample, grids, a strip PNG, an .npz and protocol.json."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from absl import logging

from vdm_jax.generation.run import generate_from_workdir
from vdm_jax.metrics import video_io
from vdm_jax.versions import library_versions


def default_output_dir(workdir: str, protocol: dict[str, Any]) -> str:
  """workdir/samples/sample_<step>_<sampler><steps>[_cfg<w>][_<method><k>][_T<frames>]_seed<seed>.

  Sampler, steps, guidance, frame conditioning, length and seed are in the name, so such runs
  don't overwrite each other; other options (eta, gamma, labels, ...) need --output_dir.
  """
  parts = [f"sample_{protocol['checkpoint_step']:08d}",
           f"{protocol['sampler']}{protocol['num_steps']}"]
  if protocol.get("guidance_weight"):
    parts.append(f"cfg{protocol['guidance_weight']:g}")
  if protocol.get("cond_frames"):
    parts.append(f"{protocol['frame_method']}{protocol['cond_frames']}")
  if protocol.get("num_frames", 0) > protocol.get("train_num_frames", 0):
    parts.append(f"T{protocol['num_frames']}")
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
    fps: frames per second of the video files; None -> the training config's sample.fps.
    **kwargs: generate_from_workdir's arguments.

  Returns:
    (output_dir, protocol without the ground truth).
  """
  videos, protocol = generate_from_workdir(workdir, **kwargs)
  ground_truth = protocol.pop("ground_truth", None)
  output_dir = output_dir or default_output_dir(workdir, protocol)
  protocol["output_dir"] = os.path.abspath(output_dir)
  if jax.process_index() == 0:
    write_samples(output_dir, videos, protocol, ground_truth=ground_truth, fps=fps)
    logging.info("wrote %d samples %s to %s", len(videos), list(videos.shape[1:]), output_dir)
  return output_dir, protocol
