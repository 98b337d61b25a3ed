"""Child process for test_killed_async_save_is_ignored: save step 1, then die during step 2's save.

Usage: python tests/_ckpt_kill_child.py DIR   (XLA_FLAGS / PYTHONPATH set by the test)
Saves step 1 and waits for it; starts an async save of a ~36 MB step 2, waits until Orbax's
temporary directory for step 2 exists (so the kill lands mid-write), and SIGKILLs itself.
"""

import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def make_state(step: int) -> dict:
  """Step 1: a small state; step 2: ~36 MB, so its write outlasts the kill."""
  n = 64 if step == 1 else 3072
  w = np.random.default_rng(step).standard_normal((n, n), dtype=np.float32)
  return {"params": {"w": jnp.asarray(w),  # f32, 3072^2 * 4 B = 36 MB
                     "b": jnp.full((n,), step, jnp.bfloat16)},
          "step": jnp.asarray(step, jnp.int32),
          "rng": jax.random.key_data(jax.random.key(step))}


def main(directory: str) -> None:
  from vdm_jax.checkpoints import Checkpointer  # noqa: PLC0415
  ckpt = Checkpointer(directory)
  ckpt.save(1, make_state(1), data_state={"position": 1}, manifest={"step": 1})
  ckpt.wait_until_finished()
  big = jax.block_until_ready(make_state(2))
  ckpt.save(2, big, data_state={"position": 2}, manifest={"step": 2})
  deadline = time.monotonic() + 30
  while time.monotonic() < deadline:
    names = os.listdir(directory)
    if "2" in names:
      print("step 2 finalized before the kill", flush=True)
      sys.exit(3)
    if any(n.startswith("2.orbax-checkpoint-tmp") for n in names):
      print("killing during save of step 2", flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.001)
  sys.exit(4)


if __name__ == "__main__":
  main(sys.argv[1])
