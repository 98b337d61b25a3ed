"""Video datasets and the input pipeline (numpy out; no model code)."""

from vdm_jax.data.config import DataConfig, DatasetInfo
from vdm_jax.data.pipeline import TrainIterator, create_eval_iterator, create_train_iterator
from vdm_jax.data.registry import KNOWN_DATASETS, dataset_info

__all__ = [
    "DataConfig", "DatasetInfo", "KNOWN_DATASETS", "TrainIterator",
    "create_eval_iterator", "create_train_iterator", "dataset_info",
]
