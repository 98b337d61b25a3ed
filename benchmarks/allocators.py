"""The default train step under each malloc (glibc, mimalloc from PyPI, tcmalloc), alternated.

    python -m benchmarks.allocators [--config default] [--rounds 3] [--steps 20]

Each round runs benchmarks.step_probe once per allocator, in a fresh process with LD_PRELOAD set
(glibc: nothing preloaded), so every allocator sees the same machine load pattern; the table gives
each allocator's median step over rounds and its speed relative to glibc. An allocator that is not
installed is skipped (tcmalloc needs `apt-get install libtcmalloc-minimal4`; mimalloc comes with
requirements.txt). runtime.py's VDM_ALLOCATOR=auto order comes from this table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks import common
from vdm_jax import runtime


def _probe(lib: str | None, args: argparse.Namespace) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
  if lib:
    env["LD_PRELOAD"] = lib
  cmd = [sys.executable, "-m", "benchmarks.step_probe", "--config", args.config,
         "--steps", str(args.steps), "--json"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="default")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=20)
  args = p.parse_args(argv)
  libs = {"glibc": None, "mimalloc": runtime.find_mimalloc(), "tcmalloc": runtime.find_tcmalloc()}
  libs = {k: v for k, v in libs.items() if k == "glibc" or v}
  print(f"{common.cpu_name()}; load {common.load_average()}; allocators {sorted(libs)}")
  medians: dict[str, list[float]] = {k: [] for k in libs}
  for r in range(args.rounds):
    for name, lib in libs.items():
      out = _probe(lib, args)
      medians[name].append(out["median_s"])
      print(f"round {r + 1} {name:9s} median step {out['median_s']:.3f} s "
            f"(cpu {out['median_cpu_s']:.3f} s, load {out['load']})", flush=True)
  base = statistics.median(medians["glibc"])
  print("allocator | median step s (rounds) | speed vs glibc")
  for name, values in medians.items():
    m = statistics.median(values)
    print(f"{name} | {m:.3f} ({', '.join(f'{v:.3f}' for v in values)}) | {base / m:.2f}x")


if __name__ == "__main__":
  main(sys.argv[1:])
