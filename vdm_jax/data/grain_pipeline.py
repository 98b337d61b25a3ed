"""The training input pipeline on grain: decoding in worker processes, grain's own resumable state.

The same examples as a function of their position g in a global stream (like pipeline.py), built
from grain's dataset API:

  MapDataset.range(N).shuffle(seed).repeat()   the global stream: a new permutation each epoch
    .random_map(_Preprocess, seed)             read, decode, crop, flip, image frames of element g,
                                               its rng a function of (seed, g) only
    [p::P]                                     host p of P takes positions p, p + P, p + 2P, ...
    .batch(b)                                  b = G / P: batch k is a pure function of k
    .to_iter_dataset().mp_prefetch(W)          W worker processes (spawned) each read, decode,
                                               crop and stack every W-th batch; 0: this process,
                                               one thread ahead

Batch k of host p holds stream positions (k b + j) P + p, j < b: hosts read disjoint examples
whose union is positions [k G, (k + 1) G), which is batch k of a one-host run (in another order).
mp_prefetch hands batches back in order, so they do not depend on W either; a whole batch crosses
from a worker in one message (one element at a time cost ~5 ms each: 184 videos/s with one worker
where this process alone makes 1,700). The iterator's state is grain's own
(`DatasetIterator.get_state`, JSON) inside this iterator's state dict; it holds only counts of
batches consumed (per worker), which every host shares after the same number of steps, so the one
state the trainer saves (checkpoints.py writes `data_state` from process 0) resumes every host
exactly.

The per-example work is pipeline.py's `_ExampleReader.example` (same preprocessing and batch dict),
handed in by `pipeline.create_train_iterator` (this module imports no pipeline code, so the import
graph stays a DAG); each worker opens its own reader on first use. Spawned workers import this
package (and with it TensorFlow, for TFDS): a few seconds per worker when the iterator starts, once.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from vdm_jax.data.config import DataConfig

Batch = dict[str, np.ndarray]
GRAIN_PIP = "pip install grain==0.2.18"
_CHECKED_KEYS = ("seed", "global_batch_size", "num_examples", "name")


class ExampleReader(Protocol):
  """pipeline._ExampleReader's interface: a split's length and its preprocessed examples."""

  def __len__(self) -> int: ...

  def example(self, index: int, rng: np.random.Generator,
              train: bool) -> tuple[np.ndarray, int, dict[str, float]]: ...


ReaderFactory = Callable[[DataConfig, str], ExampleReader]  # (config, split) -> reader; picklable


def grain_available() -> bool:
  """Whether the grain package is installed (without importing it)."""
  return importlib.util.find_spec("grain") is not None


class _Preprocess:
  """grain random_map: stream element (a dataset index) -> {'video', 'label'(, 'fps', 'motion')}.

  Pickled into the worker processes without its reader (TFDS sources are opened per process).
  """

  def __init__(self, config: DataConfig, make_reader: ReaderFactory):
    self.config, self.make_reader = config, make_reader
    self._reader: ExampleReader | None = None

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_reader": None}

  def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if self._reader is None:
      self._reader = self.make_reader(self.config, self.config.train_split)
    video, label, micro = self._reader.example(int(index), rng, train=True)
    return {"video": video, "label": np.int32(label),
            **{k: np.float32(v) for k, v in micro.items()}}  # 'fps', 'motion' when stored


def _check_flags_parsed() -> None:
  """grain's worker processes read absl flags; outside an absl app (tests, notebooks) use defaults."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class GrainTrainIterator:
  """Infinite iterator over this host's training batches, on grain (see the module docstring).

  Yields the batch dict of `pipeline.TrainIterator`: {'video': float32 [b, T + K, R, R, C] in
  [-1, 1], 'label': int32 [b], 'image_mask': bool [b, T + K]}. get_state()/set_state() save and
  restore the position exactly: grain's state plus the fields that must match on resume.
  """

  def __init__(self, config: DataConfig, global_batch_size: int, *, seed: int,
               process_index: int, process_count: int, make_reader: ReaderFactory,
               image_mask: np.ndarray):
    """Args as pipeline.create_train_iterator's; make_reader(config, split) builds the reader.

    image_mask: bool [b, T + K], the batch's 'image_mask'.
    """
    if not grain_available():
      raise ImportError(f"data.loader='grain' needs the grain package: {GRAIN_PIP}")
    import grain  # pylint: disable=g-import-not-at-top  (a second or more: only when used)
    if not 0 <= seed < 2**32:
      raise ValueError(f"seed={seed}: the grain loader needs 0 <= seed < 2**32.")
    _check_flags_parsed()
    self.config = config
    self.global_batch_size = global_batch_size
    self.batch_size = global_batch_size // process_count
    self.seed = seed
    preprocess = _Preprocess(config, make_reader)
    num_examples = len(make_reader(config, config.train_split))  # opens (or builds) the data
    self.num_examples = num_examples
    ds = grain.MapDataset.range(num_examples)
    if config.shuffle_buffer:
      ds = ds.shuffle(seed=seed)  # a new permutation each epoch (seed + epoch)
    ds = ds.repeat().random_map(preprocess, seed=seed)[process_index::process_count]
    ds = ds.batch(self.batch_size, drop_remainder=True)
    ahead = max(config.prefetch, 1)  # batches
    # One reading thread runs ahead of the train step in this process; a worker process needs none.
    threads = 0 if config.num_workers else 1
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=ahead))
    if config.num_workers:
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=config.num_workers, per_worker_buffer_size=ahead))
    self._iter = iter(it_ds)
    self._mask = image_mask
    self._step = 0

  def __iter__(self) -> GrainTrainIterator:
    return self

  def __next__(self) -> Batch:
    batch = next(self._iter)
    self._step += 1
    return {**batch, "image_mask": self._mask.copy()}  # video, label (, fps, motion)

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position: grain's iterator state plus the fields checked on resume."""
    return {"loader": "grain", "grain": self._iter.get_state(), "step": self._step,
            "seed": self.seed, "global_batch_size": self.global_batch_size,
            "num_examples": self.num_examples, "name": self.config.name,
            "num_workers": self.config.num_workers}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from another iterator's get_state() (any host's: the counts are shared).

    Raises:
      ValueError: the state comes from the numpy loader, another seed, batch size, dataset or
        worker count (grain's state has one entry per worker).
    """
    if state.get("loader") != "grain":
      raise ValueError("The data state was saved by the numpy loader (data.loader='numpy'); resume "
                       "with --config.data.loader=numpy, or start a new workdir for the grain loader.")
    current = self.get_state()
    if state.get("num_workers") != current["num_workers"]:
      raise ValueError(
          f"The data state was saved with data.num_workers={state.get('num_workers')!r} (grain's "
          f"state has one entry per worker); resume with --config.data.num_workers="
          f"{state.get('num_workers')!r}: the batches are the same for any worker count.")
    for key in _CHECKED_KEYS:
      if state.get(key) != current[key]:
        raise ValueError(
            f"Iterator state has {key}={state.get(key)!r} but this iterator has {current[key]!r}: "
            "resume with the same data config, seed and global batch size.")
    self._iter.set_state(state["grain"])
    self._step = int(state["step"])

  def close(self) -> None:
    """Stops the worker processes."""
    close = getattr(self._iter, "close", None)
    if close is not None:
      close()
