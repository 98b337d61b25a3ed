"""Shared fixtures: one data directory with the embedded datasets built once."""

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))
