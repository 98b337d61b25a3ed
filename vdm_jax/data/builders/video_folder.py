"""video_folder/<name>: a TFDS dataset made from a folder of video files.

Read back without this code by `tfds.builder_from_directory` (DataConfig name
"folder/<name>"). Features: 'video' uint8 [T, R, R, 3] (a zlib tensor, or with
frame_encoding "png"/"jpeg" a tfds Video of encoded frames: smaller, slower to
decode, the data.loader='grain' case); 'fps'
float32, the clip's frame rate (0 when the file had no timestamps) and 'motion'
float32, its motion score (`curation.motion_score`, pixels per second at 64 x 64):
the data side of SVD's micro-conditioning, absent from datasets made before them,
so readers must treat both as optional; and 'label' (top-level subfolder) when
the folder has label subfolders.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from vdm_jax.data import curation, video_files
from vdm_jax.data.paths import check_folder_name, removed_on_failure

FRAME_ENCODINGS = ("zlib", "png", "jpeg")


@dataclasses.dataclass
class VideoFolderConfig(tfds.core.BuilderConfig):
  input_dir: str = ""
  num_frames: int = 16
  resolution: int = 64
  frame_stride: int = 1
  fps: float | None = None
  max_clips_per_video: int | None = None
  test_fraction: float = 0.0
  frame_encoding: str = "zlib"
  curation_config: curation.CurationConfig = dataclasses.field(default_factory=curation.CurationConfig)


class VideoFolder(tfds.core.GeneratorBasedBuilder):
  """Clips cut from a folder of videos."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, config: VideoFolderConfig, **kwargs):
    self._files = video_files.find_videos(config.input_dir)
    self._labels = sorted({label for _, label in self._files if label is not None})
    self.report: video_files.DecodeReport | None = None
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    shape = (cfg.num_frames, cfg.resolution, cfg.resolution, 3)
    video = (tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding="zlib")
             if cfg.frame_encoding == "zlib" else
             tfds.features.Video(shape, encoding_format=cfg.frame_encoding))
    features = {"video": video,
        "fps": tfds.features.Scalar(np.float32, doc="frames per second (0: unknown)"),
        "motion": tfds.features.Scalar(np.float32, doc="motion score, pixels/s at 64x64")}
    if self._labels:
      features["label"] = tfds.features.ClassLabel(names=self._labels)
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    decoded, self.report = video_files.decode_folder(
        self._files, cfg.num_frames, cfg.resolution,
        frame_stride=cfg.frame_stride, fps=cfg.fps,
        max_clips_per_video=cfg.max_clips_per_video, curation_config=cfg.curation_config)
    n_test = 0
    if cfg.test_fraction > 0 and len(decoded) > 1:
      n_test = min(max(round(cfg.test_fraction * len(decoded)), 1),
                   len(decoded) - 1)
    every = len(decoded) / n_test if n_test else 0
    test_ids = {int(i * every) for i in range(n_test)}
    splits = {"train": self._generate_examples(
        [d for i, d in enumerate(decoded) if i not in test_ids])}
    if test_ids:
      splits["test"] = self._generate_examples(
          [d for i, d in enumerate(decoded) if i in test_ids])
    return splits

  def _generate_examples(self, decoded):
    for _, label, clips in decoded:
      for clip in clips:
        example = {"video": clip.frames, "fps": clip.fps, "motion": clip.motion}
        if self._labels:
          example["label"] = label
        yield clip.key, example


def make_folder_dataset(input_dir: str, name: str, data_dir: str, *,
                        num_frames: int = 16, resolution: int = 64,
                        frame_stride: int = 1, fps: float | None = None,
                        max_clips_per_video: int | None = None,
                        test_fraction: float = 0.0,
                        curation_config: curation.CurationConfig | None = None,
                        frame_encoding: str = "zlib") -> dict:
  """Builds data_dir/video_folder/<name>/1.0.0 from input_dir's videos.

  curation_config: what to split at cuts and drop (static, duplicates); None keeps every clip.
  frame_encoding: "zlib" (a compressed uint8 tensor per clip), or "png" / "jpeg" (encoded frames).

  Returns:
    The decode report as a dict (also written to report.json in the dataset
    directory): files found, read, skipped and why, cuts, shots, candidate and
    kept clips, and every dropped shot or clip with its reason.

  A failed build removes the folders it created under data_dir (and nothing else).

  Raises:
    FileNotFoundError: input_dir missing or without video files.
    ValueError: bad arguments (a name that is not one plain folder name), or no readable video.
  """
  check_folder_name(name)
  if num_frames < 1 or resolution < 1 or frame_stride < 1:
    raise ValueError("num_frames, resolution and frame_stride must be >= 1.")
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}.")
  if frame_encoding not in FRAME_ENCODINGS:
    raise ValueError(f"frame_encoding={frame_encoding!r} is not one of {', '.join(FRAME_ENCODINGS)}.")
  config = VideoFolderConfig(
      name=name, input_dir=input_dir, num_frames=num_frames,
      resolution=resolution, frame_stride=frame_stride, fps=fps,
      max_clips_per_video=max_clips_per_video, test_fraction=test_fraction,
      frame_encoding=frame_encoding, curation_config=curation_config or curation.CurationConfig())
  with removed_on_failure(data_dir, os.path.join(data_dir, VideoFolder.name, name)):
    builder = VideoFolder(config=config, data_dir=data_dir)
    builder.download_and_prepare(file_format="array_record")
    report = builder.report.as_dict() if builder.report else {}
    report["curation"] = dataclasses.asdict(config.curation_config)
    with open(os.path.join(builder.data_dir, "report.json"), "w") as f:
      json.dump(report, f, indent=1)
  return report
