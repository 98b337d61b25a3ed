"""A study's table: mean and sample standard deviation over seeds per row, with its protocol."""

from __future__ import annotations

import json
import math
from typing import Any


def _mean_spread(values: list[float]) -> dict[str, float]:
  finite = [v for v in values if v is not None and math.isfinite(v)]
  n = len(finite)
  if not n:
    return {"mean": float("nan"), "std": float("nan"), "n": 0}
  mean = sum(finite) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else 0.0
  return {"mean": mean, "std": std, "n": n}


def aggregate(study: Any, per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """{run: {metric: {mean, std, n}, train_cpu_s: ..., seeds: {...}}} in the study's row order."""
  rows = {}
  for name in study.runs:
    seeds = {spec.seed: per_seed[spec.key] for spec in study.specs()
             if spec.name == name and spec.key in per_seed}
    metrics = sorted({m for r in seeds.values() for m in r.get("metrics", {})})
    row = {m: _mean_spread([r["metrics"].get(m) for r in seeds.values()]) for m in metrics}
    row["train_cpu_s"] = _mean_spread([r["train"]["cpu_s"] for r in seeds.values()])
    row["eval_cpu_s"] = _mean_spread([r["eval_cost"]["cpu_s"] for r in seeds.values()])
    rows[name] = {"overrides": study.runs[name], "metrics": row,
                  "seeds": {str(s): {"metrics": r.get("metrics", {}), "step": r.get("step"),
                                     "train": r["train"], "eval": r["eval_cost"]}
                            for s, r in seeds.items()}}
  return rows


def _fmt(stat: dict[str, float], digits: int = 3) -> str:
  if not stat or stat.get("n", 0) == 0:
    return "-"
  mean, std = stat["mean"], stat["std"]
  text = f"{mean:.{digits}g}"
  return text if stat["n"] < 2 else f"{text} ± {std:.2g}"


def markdown_table(results: dict[str, Any]) -> str:
  """The study's table: a row per run, mean ± sample std over seeds (n = seeds), and its protocol."""
  rows = results["rows"]
  metrics = sorted({m for r in rows.values() for m in r["metrics"]} - {"train_cpu_s", "eval_cpu_s"})
  ev = results["evaluation"]
  lines = [f"# Study `{results['study']}`", "", results["claim"], "",
           f"Protocol: {ev['num_samples']} generated vs {ev['num_real']} real test clips, "
           f"{ev['num_frames']} frames, {ev['sampler']} {ev['num_steps']} steps, "
           f"{'EMA' if ev['use_ema'] else 'raw'} parameters, final checkpoint; base config "
           f"`{results['config']}` with {json.dumps(results['overrides'])}; seeds {results['seeds']} "
           "(mean ± sample std over seeds); CPU time per run = user + system seconds of the "
           f"train.py / evaluate.py processes on {results['machine']}.", "",
           f"Command: `{results['command']}` ({results['written_utc']})", "",
           "| run | overrides | n | " + " | ".join(metrics) + " | train CPU min | eval CPU min |",
           "|---|---|---|" + "---|" * (len(metrics) + 2)]
  for name, row in rows.items():
    m = row["metrics"]
    n = m["train_cpu_s"]["n"]
    cpu = [{k: v / 60 if k != "n" else v for k, v in m[key].items()}
           for key in ("train_cpu_s", "eval_cpu_s")]
    overrides = ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "(base)"
    cells = [_fmt(m.get(metric, {})) for metric in metrics] + [_fmt(c, 2) for c in cpu]
    lines.append(f"| {name} | {overrides} | {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
