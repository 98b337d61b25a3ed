"""Index-based video input pipeline: numpy batches, exact resumption.

Every training example is a pure function of (seed, g), g the position in the
global example stream: g -> (epoch, position) -> example index through a
per-epoch permutation of the split; clip start, flip and the K image frames
come from numpy's generator seeded with (seed, g). Host p of P takes stream
positions [step * G + p * b, step * G + (p + 1) * b) of global batch `step`
(b = G / P), so hosts read disjoint examples whose union is the global batch,
and the iterator's whole state is the step counter.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from vdm_jax.data import grain_pipeline, registry
from vdm_jax.data.config import DataConfig
from vdm_jax.data.tf_setup import tfds
from vdm_jax.metrics import video_io

Batch = dict[str, np.ndarray]
EVAL_SEED = 0


def clip_span(num_frames: int, frame_stride: int) -> int:
  """Source frames covered by a clip of num_frames at frame_stride."""
  return (num_frames - 1) * frame_stride + 1


def temporal_crop(video: np.ndarray, num_frames: int, frame_stride: int,
                  start: int) -> np.ndarray:
  """Frames start, start + stride, ... of video [L, H, W, C] -> [T, H, W, C].

  Raises:
    ValueError: the video is shorter than the clip.
  """
  span = clip_span(num_frames, frame_stride)
  if start < 0 or start + span > video.shape[0]:
    raise ValueError(
        f"A clip of {num_frames} frames at stride {frame_stride} from frame "
        f"{start} needs {start + span} frames; the video has "
        f"{video.shape[0]}. Lower num_frames or frame_stride.")
  return video[start:start + span:frame_stride]


def random_start(rng: np.random.Generator, length: int, num_frames: int,
                 frame_stride: int) -> int:
  """Uniform start frame of a clip inside a video of `length` frames."""
  return int(rng.integers(0, max(length - clip_span(num_frames,
                                                    frame_stride), 0) + 1))


class _ExampleReader:
  """Turns (example index, rng) into one preprocessed numpy example."""

  def __init__(self, config: DataConfig, split: str):
    self.config = config
    self.spec = registry.get_spec(config.name)
    self.source = registry.open_source(config.name, split,
                                       config.resolved_data_dir)
    if len(self.source) == 0:
      raise ValueError(f"Split {split!r} of {config.name!r} is empty.")
    self.image_source = None
    if config.image_frames and config.image_dataset:
      builder = tfds.builder(config.image_dataset,
                             data_dir=config.resolved_data_dir)
      self.image_source = builder.as_data_source(split=config.image_split)

  def __len__(self) -> int:
    return len(self.source)

  def _video(self, index: int) -> tuple[np.ndarray, int]:
    example = self.source[int(index)]
    return (registry.read_video(example, self.spec),
            registry.read_label(example, self.spec))

  def _image_frames(self, rng: np.random.Generator, channels: int
                    ) -> np.ndarray:
    """K independent frames uint8 [K, R, R, C]."""
    frames = []
    for _ in range(self.config.image_frames):
      if self.image_source is not None:
        image = self.image_source[int(rng.integers(len(self.image_source)))]
        image = np.asarray(image["image"])
        frame = image[None] if image.ndim == 3 else image[None, ..., None]
      else:
        video, _ = self._video(int(rng.integers(len(self.source))))
        t = int(rng.integers(video.shape[0]))
        frame = video[t:t + 1]
      frame = video_io.center_crop_resize(frame, self.config.resolution)
      frames.append(video_io.match_channels(frame, channels))
    return np.concatenate(frames)

  def example(self, index: int, rng: np.random.Generator, train: bool
              ) -> tuple[np.ndarray, int, dict[str, float]]:
    """Returns (video float32 [T + K, R, R, C] in [-1, 1], label, micro): micro holds the
    micro-conditioning features the dataset stores ('fps', 'motion'; {} when none)."""
    cfg = self.config
    raw = self.source[int(index)]
    video, label = registry.read_video(raw, self.spec), registry.read_label(raw, self.spec)
    start = (random_start(rng, video.shape[0], cfg.num_frames,
                                     cfg.frame_stride) if train else 0)
    clip = temporal_crop(video, cfg.num_frames, cfg.frame_stride,
                                    start)
    clip = video_io.center_crop_resize(clip, cfg.resolution)  # [T, R, R, C]
    if train and cfg.random_flip and rng.random() < 0.5:
      clip = clip[:, :, ::-1]
    if cfg.image_frames:
      clip = np.concatenate([clip, self._image_frames(rng, clip.shape[-1])])
    return video_io.to_float(clip), label, registry.read_micro(raw)


def micro_columns(micros: list[dict[str, float]]) -> dict[str, np.ndarray]:
  """The examples' micro-conditioning features as batch columns float32 [b] ('fps', 'motion':
  those every example has)."""
  names = [k for k in registry.MICRO_FEATURES if micros and all(k in m for m in micros)]
  return {k: np.asarray([m[k] for m in micros], np.float32) for k in names}


def _image_mask(batch_size: int, config: DataConfig) -> np.ndarray:
  """bool [b, T + K], True on the K appended image frames."""
  mask = np.zeros((batch_size, config.num_frames + config.image_frames), bool)
  mask[:, config.num_frames:] = True
  return mask


class TrainIterator(Iterator[Batch]):
  """Infinite iterator over this host's training batches (numpy dicts).

  Yields {'video': float32 [b, T + K, R, R, C] in [-1, 1], 'label': int32 [b],
  'image_mask': bool [b, T + K]}, plus 'fps' and 'motion' float32 [b] when the dataset stores
  them (micro-conditioning). get_state()/set_state() save and restore the
  position exactly (the state is the number of batches consumed).
  """

  def __init__(self, config: DataConfig, global_batch_size: int, *, seed: int,
               process_index: int, process_count: int):
    self.config = config
    self.global_batch_size = global_batch_size
    self.batch_size = global_batch_size // process_count
    self.seed = seed
    self.process_index = process_index
    self.reader = _ExampleReader(config, config.train_split)
    self.num_examples = len(self.reader)
    self._step = 0
    self._pool = (concurrent.futures.ThreadPoolExecutor(
        max(config.num_workers, 1), thread_name_prefix="vdm_data")
                  if config.prefetch else None)
    self._pending: collections.deque = collections.deque()

  @functools.lru_cache(maxsize=4)  # noqa: B019  (the iterator lives as long as the run)
  def _permutation(self, epoch: int) -> np.ndarray:
    if self.config.shuffle_buffer == 0:
      return np.arange(self.num_examples)
    return np.random.default_rng([self.seed, epoch, 1]).permutation(
        self.num_examples)

  def stream_positions(self, step: int) -> np.ndarray:
    """Global stream positions int64 [b] of this host's part of batch step."""
    first = step * self.global_batch_size + self.process_index * self.batch_size
    return np.arange(first, first + self.batch_size, dtype=np.int64)

  def example_indices(self, step: int) -> np.ndarray:
    """Dataset indices int64 [b] this host reads for batch `step`."""
    epochs, pos = np.divmod(self.stream_positions(step), self.num_examples)
    return np.array([self._permutation(int(e))[p] for e, p in zip(epochs, pos)])

  def make_batch(self, step: int) -> Batch:
    """This host's batch number `step` (a pure function of the step)."""
    videos, labels, micros = [], [], []
    for g, index in zip(self.stream_positions(step),
                        self.example_indices(step)):
      rng = np.random.default_rng([self.seed, int(g), 0])
      video, label, micro = self.reader.example(int(index), rng, train=True)
      videos.append(video)
      labels.append(label)
      micros.append(micro)
    return {"video": np.stack(videos),
            "label": np.asarray(labels, np.int32),
            "image_mask": _image_mask(self.batch_size, self.config),
            **micro_columns(micros)}

  def _fill(self) -> None:
    while len(self._pending) < self.config.prefetch:
      step = self._step + len(self._pending)
      self._pending.append(self._pool.submit(self.make_batch, step))

  def __next__(self) -> Batch:
    if self._pool is None:
      batch = self.make_batch(self._step)
    else:
      self._fill()
      batch = self._pending.popleft().result()
    self._step += 1
    if self._pool is not None:
      self._fill()
    return batch

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position: batches consumed plus sanity fields."""
    return {"step": self._step, "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "num_examples": self.num_examples, "name": self.config.name}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from another iterator's get_state() (cheap, no replay).

    Raises:
      ValueError: the state comes from another seed, batch size or dataset.
    """
    if state.get("loader", "numpy") != "numpy":
      raise ValueError(f"The data state was saved by the {state['loader']} loader; resume with "
                       f"--config.data.loader={state['loader']}.")
    current = self.get_state()
    for key in ("seed", "global_batch_size", "num_examples", "name"):
      if state.get(key) != current[key]:
        raise ValueError(
            f"Iterator state has {key}={state.get(key)!r} but this iterator "
            f"has {current[key]!r}: resume with the same data config, seed "
            "and global batch size.")
    for future in self._pending:
      future.cancel()
    self._pending.clear()
    self._step = int(state["step"])

  def close(self) -> None:
    """Stops the background threads."""
    if self._pool is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)


AUTO_GRAIN_MIN_CORES = 5  # data.loader="auto" picks grain for encoded frames from this many cores


def resolve_loader(config: DataConfig) -> str:
  """The training loader that config.data.loader names: "numpy" or "grain".

  "auto", from benchmarks/input_pipeline.py (batch 8, videos/s). Quiet 2 cores (load 1.7-3.0):
    raw moving_shapes numpy 2,029, grain 2,738 / 1,330 / 2,245 / 2,690 with 0 / 1 / 2 / 4 workers;
    PNG frames numpy 310, grain 181 / 134 / 255 / 264. Either is 40x what the default step takes
    (~52 videos/s), so numpy stays the raw-set default (no worker start-up, no extra package).
  Two earlier runs on loaded cores (load 8-10):
    raw uint8 tensors (the embedded sets; folder sets by default): numpy on any host. numpy
      3,353 / 1,595 against grain 2,101 / 1,541 with 0 workers, 1,286 / 1,052 with 1 and
      1,092 / 1,142 with 2: a clip decompresses fast, so worker processes only add their hand-off.
    encoded frames (PNG/JPEG: moving_mnist, bair, ucf101; folder sets with frame_encoding="png"),
      16 x 64 x 64 PNG clips: numpy 128 / 173 against grain 91 / 113 (0 workers), 129 / 87 (1),
      85 / 54 (2), 128 (4; the first run timed 4 before they had all started): numpy up to 4
      cores (PIL decodes outside the GIL, so 2 threads use both cores). From
      AUTO_GRAIN_MIN_CORES cores, grain: not measured here, but the numpy loader's Python-side
      work shares one GIL where grain's processes do not, and one 8-GPU host's train step takes
      ~670 (bair) to ~3,450 (moving_mnist) videos/s (H100 at 40% MFU) against ~150 from 2 threads.

  Raises:
    ImportError: loader="grain" and grain is not installed (the line names the pip command).
  """
  if config.loader == "grain" and not grain_pipeline.grain_available():
    raise ImportError(f"data.loader='grain' needs the grain package: {grain_pipeline.GRAIN_PIP}")
  if config.loader != "auto":
    return config.loader
  if not grain_pipeline.grain_available() or (os.cpu_count() or 1) < AUTO_GRAIN_MIN_CORES:
    return "numpy"
  spec = registry.get_spec(config.name)
  feature = registry.get_builder(config.name, config.resolved_data_dir).info.features[spec.video_key]
  return "numpy" if isinstance(feature, tfds.features.Tensor) else "grain"  # raw tensor vs encoded


def create_train_iterator(config: DataConfig, global_batch_size: int, *,
                          seed: int, process_index: int | None = None,
                          process_count: int | None = None
                          ) -> TrainIterator | grain_pipeline.GrainTrainIterator:
  """Infinite, shuffled, per-host training iterator of the loader config.loader names.

  TrainIterator (numpy, threads) or grain_pipeline.GrainTrainIterator (worker processes): the
  same batch dict, each with its own exact get_state()/set_state() (see resolve_loader).

  Args:
    config: data config.
    global_batch_size: G, batch size over all hosts.
    seed: non-negative int; same seed -> same batches.
    process_index: this host; None -> jax.process_index().
    process_count: hosts; None -> jax.process_count().

  Raises:
    ValueError: G not divisible by the process count, bad seed, bad dataset.
    ImportError: data.loader='grain' without grain installed.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple "
        f"of the process count {process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in "
                     f"[0, {process_count}).")
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed}.")
  if resolve_loader(config) == "grain":
    return grain_pipeline.GrainTrainIterator(
        config, global_batch_size, seed=seed, process_index=process_index,
        process_count=process_count, make_reader=_ExampleReader,
        image_mask=_image_mask(global_batch_size // process_count, config))
  return TrainIterator(config, global_batch_size, seed=seed,
                       process_index=process_index,
                       process_count=process_count)


def create_eval_iterator(config: DataConfig, batch_size: int, *,
                         num_examples: int | None = None,
                         split: str | None = None) -> Iterator[Batch]:
  """Finite, unshuffled, deterministic evaluation batches.

  Examples 0 .. n-1 of the split in order; each clip starts at frame 0, no
  flip. The last batch is padded with zero videos to batch_size; 'valid'
  bool [b] marks the real examples.

  Args:
    config: data config.
    batch_size: examples per batch (this host reads all of them).
    num_examples: first n examples; None -> the whole split.
    split: None -> config.eval_split.

  Raises:
    ValueError: batch_size < 1 or num_examples out of range.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  reader = _ExampleReader(config, split or config.eval_split)
  n = len(reader) if num_examples is None else num_examples
  if not 0 < n <= len(reader):
    raise ValueError(f"num_examples={num_examples} must be in "
                     f"[1, {len(reader)}] for this split.")
  return _eval_batches(reader, config, batch_size, n)


def _eval_batches(reader: _ExampleReader, config: DataConfig, batch_size: int,
                  n: int) -> Iterator[Batch]:
  for first in range(0, n, batch_size):
    indices = range(first, min(first + batch_size, n))
    pairs = [reader.example(i, np.random.default_rng([EVAL_SEED, i]),
                            train=False)[:2] for i in indices]
    videos = np.stack([v for v, _ in pairs])
    labels = np.asarray([label for _, label in pairs], np.int32)
    pad = batch_size - len(pairs)
    valid = np.arange(batch_size) < len(pairs)
    yield {
        "video": np.concatenate([videos, np.zeros((pad,) + videos.shape[1:],
                                                  np.float32)]),
        "label": np.concatenate([labels, np.zeros(pad, np.int32)]),
        "image_mask": _image_mask(batch_size, config),
        "valid": valid,
    }
