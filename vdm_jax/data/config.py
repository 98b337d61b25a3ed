"""Typed configuration of the video input pipeline."""

from __future__ import annotations

import dataclasses
import os

from vdm_jax.data.paths import check_folder_name

# DataConfig names of datasets made by scripts/make_video_dataset.py: folder/<name>.
FOLDER_PREFIX = "folder/"
# data.loader values: the training input pipeline (pipeline.create_train_iterator dispatches).
LOADERS = ("auto", "numpy", "grain")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to read and how to cut it into training clips.

  Built from a ConfigDict section: `DataConfig(**dict(config.data))`.

  Dataset names (see `vdm_jax.data.registry.KNOWN_DATASETS`):
    moving_shapes (32x32), moving_shapes_64, moving_digits (embedded: built
    into `data_dir` on first use, in seconds); moving_mnist,
    bair_robot_pushing_small, ucf101 (registered TFDS datasets: prepare them
    with `tfds build NAME --file_format=array_record`); and `folder/<name>` for
    a dataset made from a folder of video files by
    `scripts/make_video_dataset.py --name=<name>`.

  Attributes:
    name: dataset name, see above.
    data_dir: TFDS data directory; None -> $VDM_DATA_DIR or
      ~/tensorflow_datasets.
    train_split: TFDS split string for training (slices such as
      "test[:90%]" work).
    eval_split: TFDS split string for evaluation.
    num_frames: T, frames per clip.
    frame_stride: distance between the clip's frames in the source video.
    resolution: output height and width (centre crop to square, then resize).
    random_flip: random horizontal flip of whole clips during training.
    image_frames: K independent frames appended to each clip (joint
      image-video training); marked by 'image_mask'.
    image_dataset: None -> the K frames come from other videos of the same
      split; else a TFDS image dataset name (feature 'image') to take them from.
    image_split: split of `image_dataset`.
    shuffle_buffer: kept for config compatibility; the index-based pipeline
      shuffles each epoch with a full permutation, so this only has to be > 0
      to shuffle (0 disables shuffling of training examples).
    prefetch: batches prepared ahead in background threads (grain: per worker).
    num_workers: threads decoding examples; with the grain loader, worker
      processes (0: decode in this process).
    loader: training input pipeline: "numpy" (pipeline.py's thread pool),
      "grain" (grain_pipeline.py: worker processes; `pip install grain`), or
      "auto": the faster one on the dataset's kind as measured
      (pipeline.resolve_loader says which and why).
  """
  name: str = "moving_shapes"
  data_dir: str | None = None
  train_split: str = "train"
  eval_split: str = "test"
  num_frames: int = 16
  frame_stride: int = 1
  resolution: int = 32
  random_flip: bool = False
  image_frames: int = 0
  image_dataset: str | None = None
  image_split: str = "train"
  shuffle_buffer: int = 1024
  prefetch: int = 2
  num_workers: int = 2
  loader: str = "auto"

  def __post_init__(self):
    if self.loader not in LOADERS:
      raise ValueError(f"data.loader={self.loader!r} is not one of {', '.join(LOADERS)}; "
                       "change --config.data.loader")
    for field in ("num_frames", "frame_stride", "resolution"):
      if not getattr(self, field) >= 1:
        raise ValueError(f"data.{field}={getattr(self, field)!r} is out of range: it must be >= 1; "
                         f"change --config.data.{field}")
    for field in ("image_frames", "prefetch", "shuffle_buffer", "num_workers"):
      if not getattr(self, field) >= 0:
        raise ValueError(f"data.{field}={getattr(self, field)!r} is out of range: it must be >= 0; "
                         f"change --config.data.{field}")
    if self.name.startswith(FOLDER_PREFIX):
      try:
        check_folder_name(self.name[len(FOLDER_PREFIX):])
      except ValueError as err:
        raise ValueError(f"data.name={self.name!r}: {err}") from None

  @property
  def resolved_data_dir(self) -> str:
    """The data directory actually used."""
    if self.data_dir:
      return os.path.expanduser(self.data_dir)
    return os.path.expanduser(
        os.environ.get("VDM_DATA_DIR", "~/tensorflow_datasets"))


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Cheap facts about a dataset, read from its metadata (no full read).

  Attributes:
    name: the DataConfig name.
    num_classes: number of labels; 0 when the dataset has no labels ('label'
      is then all zeros).
    num_frames: frames per stored video (the longest clip available; for
      variable-length datasets the length of the shortest video is unknown
      cheaply and this is None).
    channels: colour channels of the stored frames (1 or 3).
    resolution: (height, width) of the stored frames.
    num_train_examples: examples in config.train_split.
    num_eval_examples: examples in config.eval_split.
    micro_medians: the micro-conditioning features the dataset stores per clip ('fps',
      'motion'; registry.MICRO_FEATURES), each with its median over the training split (the
      default of sample.py's --fps / --motion); {} when it stores none.
  """
  name: str
  num_classes: int
  num_frames: int | None
  channels: int
  resolution: tuple[int, int]
  num_train_examples: int
  num_eval_examples: int
  micro_medians: dict[str, float] = dataclasses.field(default_factory=dict)
