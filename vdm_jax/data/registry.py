"""Known datasets: where each lives, its feature keys and how to open it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from vdm_jax.data.config import FOLDER_PREFIX, DataConfig, DatasetInfo
from vdm_jax.data.paths import check_folder_name, removed_on_failure
from vdm_jax.data.tf_setup import tfds

FOLDER_BUILDER_NAME = "video_folder"
# Micro-conditioning features (Stable Video Diffusion) a dataset may store per clip: the clip's
# frame rate and motion score (video_folder and moving_shapes_speeds).
MICRO_FEATURES = ("fps", "motion")
MEDIAN_EXAMPLES = 512  # train examples read for the medians of the micro features


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How to find a dataset and read its examples.

  Attributes:
    tfds_name: TFDS name (with config) of the dataset.
    video_key: feature holding the frames [T, H, W, C] uint8.
    label_key: feature holding an int class label, or None.
    embedded: True when the builder ships in this package and builds itself.
  """
  tfds_name: str
  video_key: str
  label_key: str | None
  embedded: bool = False


KNOWN_DATASETS: dict[str, DatasetSpec] = {
    "moving_shapes": DatasetSpec("moving_shapes/32", "video", "label", True),
    "moving_shapes_64": DatasetSpec("moving_shapes/64", "video", "label", True),
    # Slow or fast shapes, with 'fps' and 'motion' features (micro-conditioning).
    "moving_shapes_speeds": DatasetSpec("moving_shapes/speeds_32", "video", "label", True),
    "moving_digits": DatasetSpec("moving_digits", "video", "label", True),
    "moving_mnist": DatasetSpec("moving_mnist", "image_sequence", None),
    "bair_robot_pushing_small": DatasetSpec(
        "bair_robot_pushing_small", "image_main", None),
    "ucf101": DatasetSpec("ucf101", "video", "label"),
}


def get_spec(name: str) -> DatasetSpec:
  """Returns the spec of a DataConfig name; ValueError if unknown or not a plain folder name."""
  if name.startswith(FOLDER_PREFIX) and len(name) > len(FOLDER_PREFIX):
    folder = check_folder_name(name[len(FOLDER_PREFIX):])
    return DatasetSpec(f"{FOLDER_BUILDER_NAME}/{folder}", "video", "label")
  if name not in KNOWN_DATASETS:
    raise ValueError(
        f"Unknown dataset name {name!r}. Known: {sorted(KNOWN_DATASETS)}, or "
        f"'{FOLDER_PREFIX}<name>' for a dataset made by "
        "scripts/make_video_dataset.py --name=<name>.")
  return KNOWN_DATASETS[name]


def _embedded_builder(spec: DatasetSpec, data_dir: str):
  # Imported here: registering the builder classes is only needed to build.
  # pylint: disable-next=g-import-not-at-top
  from vdm_jax.data.builders import moving_digits, moving_shapes
  if spec.tfds_name.startswith("moving_shapes/"):
    return moving_shapes.MovingShapes(
        config=spec.tfds_name.split("/")[1], data_dir=data_dir)
  return moving_digits.MovingDigits(data_dir=data_dir)


def _folder_dir(spec: DatasetSpec, data_dir: str) -> str:
  name = spec.tfds_name.split("/", 1)[1]
  return os.path.join(data_dir, FOLDER_BUILDER_NAME, name)


def get_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """Returns the TFDS builder of a dataset, building embedded ones if needed.

  Raises:
    ValueError: unknown name.
    FileNotFoundError: a folder dataset that was not made in data_dir.
  """
  spec = get_spec(name)
  if spec.embedded:
    builder = _embedded_builder(spec, data_dir)
    if not builder.is_prepared():
      with removed_on_failure(data_dir, builder.data_dir):
        builder.download_and_prepare(file_format="array_record")
    return builder
  if name.startswith(FOLDER_PREFIX):
    root = _folder_dir(spec, data_dir)
    versions = sorted(os.listdir(root)) if os.path.isdir(root) else []
    if not versions:
      raise FileNotFoundError(
          f"No folder dataset {name!r} in {root}. Make it with: python "
          f"scripts/make_video_dataset.py --input_dir=VIDEOS "
          f"--name={name[len(FOLDER_PREFIX):]} --data_dir={data_dir}")
    return tfds.builder_from_directory(os.path.join(root, versions[-1]))
  return tfds.builder(spec.tfds_name, data_dir=data_dir)


def _not_prepared_message(name: str, spec: DatasetSpec, data_dir: str,
                          err: Exception) -> str:
  return (
      f"Dataset {name!r} ({spec.tfds_name}) is not prepared as array_record "
      f"in {data_dir} ({type(err).__name__}: {err}). This machine cannot "
      f"download it. Prepare it on a machine with network access:\n"
      f"  tfds build {spec.tfds_name} --file_format=array_record "
      f"--data_dir=DIR\n"
      f"then copy DIR/{spec.tfds_name.split('/')[0]} into {data_dir} (or set "
      f"DataConfig.data_dir / $VDM_DATA_DIR to DIR). Datasets needing a manual "
      f"download read it from DIR/downloads/manual.")


def open_source(name: str, split: str, data_dir: str) -> Sequence[Any]:
  """Random-access source of a split's examples (a tfds data source).

  Raises:
    ValueError: unknown dataset name or split.
    FileNotFoundError: data not prepared and not buildable here.
  """
  spec = get_spec(name)
  builder = get_builder(name, data_dir)
  try:
    return builder.as_data_source(split=split)
  except (ValueError, KeyError) as err:
    if "split" in str(err).lower() and builder.info.splits:
      raise ValueError(
          f"Split {split!r} of {name!r} is not valid ({err}). Available "
          f"splits: {sorted(builder.info.splits)}; slices such as "
          f"'train[:90%]' work too.") from err
    raise FileNotFoundError(
        _not_prepared_message(name, spec, data_dir, err)) from err
  except Exception as err:  # pylint: disable=broad-except
    raise FileNotFoundError(
        _not_prepared_message(name, spec, data_dir, err)) from err


def read_video(example: dict[str, Any], spec: DatasetSpec) -> np.ndarray:
  """Frames uint8 [L, H, W, C] of a decoded example."""
  video = example[spec.video_key]
  if not isinstance(video, np.ndarray):
    video = np.stack(list(video))  # Video features decode to frame lists.
  if video.ndim == 3:
    video = video[..., None]
  return video.astype(np.uint8, copy=False)


def read_label(example: dict[str, Any], spec: DatasetSpec) -> int:
  """Class label of a decoded example, 0 when the dataset has none."""
  if spec.label_key and spec.label_key in example:
    return int(example[spec.label_key])
  return 0


def read_micro(example: dict[str, Any]) -> dict[str, float]:
  """The micro-conditioning features (MICRO_FEATURES) a decoded example has, as floats."""
  return {k: float(example[k]) for k in MICRO_FEATURES if k in example}


def micro_medians(source: Sequence[Any], features: Sequence[str]) -> dict[str, float]:
  """Median of each micro feature the dataset stores, over its first MEDIAN_EXAMPLES examples
  (evenly spaced over the split); {} when it stores none."""
  names = [k for k in MICRO_FEATURES if k in features]
  if not names or not len(source):
    return {}
  picks = np.unique(np.linspace(0, len(source) - 1, min(len(source), MEDIAN_EXAMPLES)).astype(int))
  values = [read_micro(source[int(i)]) for i in picks]
  return {k: float(np.median([v[k] for v in values])) for k in names}


def dataset_info(config: DataConfig) -> DatasetInfo:
  """Cheap facts about config's dataset (metadata and indexes only).

  Raises:
    ValueError: unknown name or split; clips longer than the videos.
    FileNotFoundError: data not prepared.
  """
  data_dir = config.resolved_data_dir
  spec = get_spec(config.name)
  builder = get_builder(config.name, data_dir)
  train = open_source(config.name, config.train_split, data_dir)
  evals = open_source(config.name, config.eval_split, data_dir)
  features = builder.info.features
  shape = tuple(features.shape[spec.video_key])  # (T, H, W, C)
  has_label = spec.label_key and spec.label_key in features.keys()
  num_classes = features[spec.label_key].num_classes if has_label else 0
  info = DatasetInfo(
      name=config.name, num_classes=int(num_classes), num_frames=shape[0],
      channels=int(shape[-1]) if shape[-1] else 3,
      resolution=(shape[1], shape[2]), num_train_examples=len(train),
      num_eval_examples=len(evals),
      micro_medians=micro_medians(train, tuple(features.keys())))
  span = (config.num_frames - 1) * config.frame_stride + 1
  if info.num_frames is not None and span > info.num_frames:
    raise ValueError(
        f"num_frames={config.num_frames} with frame_stride="
        f"{config.frame_stride} spans {span} frames, but {config.name!r} "
        f"videos have {info.num_frames}. Lower num_frames or frame_stride.")
  return info
