"""Paths under the data directory: user-given names stay inside it, failed builds leave nothing.

`check_folder_name` is the one check of a folder dataset's <name> (DataConfig's `folder/<name>`,
the registry, the video-folder builder and scripts/make_video_dataset.py's --name all use it);
`removed_on_failure` wraps a dataset build so that a failure removes the folders it created.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator


def check_folder_name(name: str) -> str:
  """Returns `name` if it is one plain folder name, so data_dir/video_folder/<name> stays inside.

  Raises:
    ValueError: an empty name, '.', '..', a path separator or an absolute path (one line).
  """
  separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
  if (not name or name in (".", "..") or any(s in name for s in separators) or "\0" in name
      or os.path.isabs(name)):
    raise ValueError(f"dataset name {name!r} must be one plain folder name (no '/', '\\', '..' or "
                     "absolute path) so it stays inside the data directory; e.g. --name=myclips, "
                     "then --config.data.name=folder/myclips")
  return name


def _chain(root: str, target: str) -> list[str]:
  """root, then each folder from root down to target (target included)."""
  root, target = os.path.abspath(root), os.path.abspath(target)
  rel = os.path.relpath(target, root)
  if rel == "." or rel.startswith(".."):
    return [root]
  parts = rel.split(os.sep)
  return [root] + [os.path.join(root, *parts[:i + 1]) for i in range(len(parts))]


def _remove_created(created: list[str], extra: list[str]) -> None:
  """Removes the top-most created folder of the chain, then created extras that are empty."""
  made = [p for p in created if os.path.isdir(p)]
  if made:
    shutil.rmtree(made[0], ignore_errors=True)
  for path in sorted(extra, key=len, reverse=True):  # deepest first
    with contextlib.suppress(OSError):
      os.rmdir(path)  # only if empty: it may hold another build's files by now


@contextlib.contextmanager
def removed_on_failure(root: str, target: str) -> Iterator[None]:
  """On an exception in the block, removes what a dataset build created, and only that.

  The folders from `root` down to `target` (the dataset's folder) that did not exist on entry are
  removed (the top-most of them with its contents); TFDS's `downloads/extracted` under root only
  if created and still empty. Folders that existed before are left as they were.

  Args:
    root: the data directory.
    target: the folder the build writes the dataset into (e.g. data_dir/video_folder/<name>).
  """
  created = [p for p in _chain(root, target) if not os.path.exists(p)]
  downloads = os.path.join(os.path.abspath(root), "downloads")
  extra = [p for p in (downloads, os.path.join(downloads, "extracted")) if not os.path.exists(p)]
  try:
    yield
  except BaseException:
    _remove_created(created, extra)
    raise
