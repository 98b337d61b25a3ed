"""vdm_jax against lucidrains' video-diffusion-pytorch 0.7.0 (Unet3D + GaussianDiffusion) on CPU.

    python -m benchmarks.vs_pytorch --torch_dim 16 --jax_set model.base_channels=24

Setup (torch stays out of requirements.txt):
    pip install torch==2.13.0
    pip install --no-deps video-diffusion-pytorch==0.7.0 einops-exts rotary-embedding-torch
(einops, tqdm, Pillow are already in the venv; torchvision is only used by its Trainer and is
stubbed here.) Each framework runs in its own persistent subprocess (the JAX one with the allocator
the entry scripts pick, VDM_ALLOCATOR=auto|mimalloc|tcmalloc|glibc; torch with its default
allocator); rounds alternate between them so load changes hit both, and each turn starts with an
untimed call (--warmup_per_round: after the other framework's turn, caches are cold and mimalloc
has returned its idle pages to the OS). Measured: a full train step (loss, backward, Adam) and one
no-grad denoiser call, same batch and video shape. Prints medians and the ratios (torch time / jax
time: > 1 = JAX faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types


def torch_worker(args: argparse.Namespace):
  import torch
  _stub_torchvision()
  from video_diffusion_pytorch import GaussianDiffusion, Unet3D
  torch.manual_seed(0)
  unet = Unet3D(dim=args.torch_dim, dim_mults=tuple(args.dim_mults), channels=3)
  diffusion = GaussianDiffusion(unet, image_size=args.res, num_frames=args.frames, timesteps=1000)
  opt = torch.optim.Adam(diffusion.parameters(), lr=1e-4)
  video = torch.rand(args.batch, 3, args.frames, args.res, args.res)  # [B, C, T, H, W]
  t = torch.randint(0, 1000, (args.batch,))

  def train():
    loss = diffusion(video)
    opt.zero_grad()
    loss.backward()
    opt.step()

  def denoise():
    with torch.no_grad():
      unet(video, t)

  params = sum(p.numel() for p in unet.parameters())
  return {"train": train, "denoise": denoise}, params


def _stub_torchvision() -> None:
  """video_diffusion_pytorch imports torchvision for its Trainer and GIF helpers only."""
  stub = types.ModuleType("torchvision")
  stub.transforms, stub.utils = types.ModuleType("transforms"), types.ModuleType("utils")
  stub.transforms.ToTensor = lambda *a, **k: None
  sys.modules["torchvision"] = stub


def jax_worker(args: argparse.Namespace):
  os.environ.setdefault("VDM_DATA_DIR", "/tmp/vdm_data")
  import jax

  from benchmarks import common
  from vdm_jax.denoiser import make_denoise_fn
  from vdm_jax.model import count_params
  from vdm_jax.parallel import make_mesh
  over = [f"data.num_frames={args.frames}", f"data.resolution={args.res}", f"model.image_size={args.res}",
          f"train.global_batch_size={args.batch}"] + list(args.jax_set)
  common.setup_devices(args.jax_devices, args.jax_config, over)
  exp = common.load_config(args.jax_config, over)
  mesh = make_mesh()
  step, state, graphdef = common.build_step(exp, mesh)
  batch = common.shard_batch(common.dummy_batch(exp), mesh)
  compiled = step.lower(state, batch).compile()
  holder = {"state": state}

  def train():
    holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready(metrics)

  rest = _rest(exp, mesh)

  @jax.jit
  def denoise_fn(params, z, logsnr):
    return make_denoise_fn(graphdef, params, rest)(z, logsnr, None)

  logsnr = common.shard_batch({"l": jax.numpy.zeros((args.batch,))}, mesh)["l"]
  jax.block_until_ready(denoise_fn(holder["state"]["params"], batch["video"], logsnr))

  def denoise():
    jax.block_until_ready(denoise_fn(holder["state"]["params"], batch["video"], logsnr))

  return {"train": train, "denoise": denoise}, count_params(state["params"])


def _rest(exp, mesh):
  from vdm_jax.model import create_model, split_params
  _, model_state = create_model(exp.model, mesh, 0)
  return split_params(model_state)[1]


def serve(args: argparse.Namespace) -> None:
  """Worker loop: prints params, then for each stdin line 'what n warm' runs `warm` untimed calls
  and prints the timings of n more as JSON."""
  fns, params = (torch_worker if args.worker == "torch" else jax_worker)(args)
  for fn in fns.values():
    fn()  # warm-up
  print(json.dumps({"params": params}), flush=True)
  for line in sys.stdin:
    what, n, warm = line.split()
    for _ in range(int(warm)):
      fns[what]()  # untimed: the other framework just ran, caches and allocator pools are cold
    times = []
    for _ in range(int(n)):
      t0 = time.perf_counter()
      fns[what]()
      times.append(time.perf_counter() - t0)
    print(json.dumps(times), flush=True)


def start(worker: str, argv: list[str], allocator_lib: str | None) -> subprocess.Popen:
  env = dict(os.environ)
  if worker == "jax" and allocator_lib:
    env["LD_PRELOAD"] = (allocator_lib + " " + env.get("LD_PRELOAD", "")).strip()
  return subprocess.Popen([sys.executable, "-m", "benchmarks.vs_pytorch", "--worker", worker] + argv,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ask(proc: subprocess.Popen, line: str):
  proc.stdin.write(line + "\n")
  proc.stdin.flush()
  return json.loads(proc.stdout.readline())


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--worker", default="", choices=["", "torch", "jax"])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--frames", type=int, default=8)
  p.add_argument("--res", type=int, default=32)
  p.add_argument("--torch_dim", type=int, default=16)
  p.add_argument("--dim_mults", type=int, nargs="+", default=[1, 2, 2])
  p.add_argument("--jax_config", default="default")
  p.add_argument("--jax_set", nargs="*", default=[])
  p.add_argument("--jax_devices", type=int, default=-1,
                 help="JAX CPU devices: -1 one per core as train.py runs (torch uses every core "
                      "through its intra-op threads), 1 the whole batch on one device")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--per_round", type=int, default=2)
  p.add_argument("--warmup_per_round", type=int, default=1,
                 help="untimed calls at the start of each turn (the other framework ran meanwhile)")
  args = p.parse_args(argv)
  if args.worker:
    return serve(args)
  child_argv = [a for a in argv]
  from vdm_jax.runtime import find_allocator
  allocator, allocator_lib = find_allocator(os.environ.get("VDM_ALLOCATOR", "auto"))
  procs = {w: start(w, child_argv, allocator_lib) for w in ("torch", "jax")}
  params = {w: json.loads(proc.stdout.readline())["params"] for w, proc in procs.items()}
  times = {(w, what): [] for w in procs for what in ("train", "denoise")}
  for _ in range(args.rounds):
    for what in ("train", "denoise"):
      for w, proc in procs.items():
        times[(w, what)] += ask(proc, f"{what} {args.per_round} {args.warmup_per_round}")
  for proc in procs.values():
    proc.stdin.close()
    proc.wait()
  med = {k: statistics.median(v) for k, v in times.items()}
  out = {"params": params, "param_ratio_jax_over_torch": round(params["jax"] / params["torch"], 3),
         "shape": [args.batch, args.frames, args.res, args.res, 3],
         "median_s": {f"{w}_{what}": round(v, 4) for (w, what), v in med.items()},
         "train_speedup_jax": round(med[("torch", "train")] / med[("jax", "train")], 2),
         "denoise_speedup_jax": round(med[("torch", "denoise")] / med[("jax", "denoise")], 2),
         "jax_devices": args.jax_devices, "jax_allocator": allocator,
         "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main(sys.argv[1:])
