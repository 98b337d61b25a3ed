"""The host machine's memory as this process sees it, and a check that a need clearly fits it.

Used before anything is compiled or allocated: the trainer's batch and (on CPU devices) state,
sample.py's sample count.
"""

from __future__ import annotations

import os

# A need is refused when it exceeds this fraction of the machine's memory.
MEMORY_FRACTION = 0.9


def host_memory_bytes() -> int:
  """Physical memory, or a lower cgroup (container) limit; 0 when unknown."""
  try:
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    total = 0
  try:
    with open("/sys/fs/cgroup/memory.max", encoding="utf-8") as f:
      limit = f.read().strip()
  except OSError:
    limit = ""
  if limit.isdigit() and int(limit) > 0:
    total = min(total, int(limit)) if total else int(limit)
  return total


def check_fits_in_memory(need_bytes: float, what: str, change: str) -> None:
  """ValueError (one line) when `need_bytes` is over MEMORY_FRACTION of host_memory_bytes().

  Args:
    need_bytes: the estimate.
    what: what needs it, e.g. "--num_samples=5000000 (N x frames x H x W x C x 4 bytes)".
    change: what to do instead, e.g. "lower --num_samples".
  """
  total = host_memory_bytes()
  if total and need_bytes > MEMORY_FRACTION * total:
    raise ValueError(f"{what} needs about {need_bytes / 2**30:.1f} GiB of host memory, more than "
                     f"{MEMORY_FRACTION:.0%} of this machine's {total / 2**30:.1f} GiB; {change}")
