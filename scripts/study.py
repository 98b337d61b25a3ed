r"""Runs a study: trains what is missing, evaluates, and writes its table (vdm_jax/study.py).

    python scripts/study.py --study studies/parameterisation.py [--root runs/studies]
    # a quick look before the real thing (recorded in the table's overrides and protocol):
    python scripts/study.py --study studies/parameterisation.py --seeds 0 --set train.num_steps=500 \
        --eval num_samples=32 --eval num_real=32
    python scripts/study.py --study studies/attention.py --dry_run   # validate, print the commands

Interrupt it any time: a rerun skips the (run, seed) pairs that finished, and train.py resumes an
interrupted run from its latest checkpoint. Writes <root>/<study>/results.json and results.md;
each run's workdir is <root>/<study>/<run>/seed<k> (train.py's workdir, with study_train.log,
study_samples/<row>/ and study_eval.<row>.json and .log).
"""

import ast
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vdm_jax import study as study_lib  # noqa: E402
from vdm_jax.config import ConfigError  # noqa: E402

_STUDY = flags.DEFINE_string("study", None, "Study file (studies/<name>.py).", required=True)
_ROOT = flags.DEFINE_string("root", "runs/studies", "Where the study's runs and tables go.")
_ONLY = flags.DEFINE_list("only", [], "Run only these rows (names in the study's runs).")
_SEEDS = flags.DEFINE_list("seeds", [], "Seeds instead of the study's (e.g. 0 for a quick look).")
_SET = flags.DEFINE_multi_string("set", [], "section.key=value config override for every run.")
_EVAL = flags.DEFINE_multi_string("eval", [], "field=value evaluation protocol override "
                                  "(num_samples, num_real, num_frames, sampler, num_steps, metrics).")
_DRY = flags.DEFINE_bool("dry_run", False, "Validate every run's config and print the commands.")


def _pairs(items: list[str], what: str) -> dict:
  out = {}
  for item in items:
    key, sep, text = item.partition("=")
    if not sep:
      raise ConfigError(f"--{what} {item!r}: write key=value")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text  # a bare string such as ddim
    out[key.strip()] = tuple(value.split(",")) if key.strip() == "metrics" and isinstance(
        value, str) else value
  return out


def main(argv):
  del argv
  try:
    study = study_lib.load_study(_STUDY.value, only=_ONLY.value, seeds=[int(s) for s in _SEEDS.value],
                                 overrides=_pairs(_SET.value, "set"),
                                 evaluation=_pairs(_EVAL.value, "eval"))
    if _DRY.value:
      configs = study_lib.validate_study(study)
      for spec in study.specs():
        workdir = spec.workdir(os.path.join(_ROOT.value, study.name))
        samples = study_lib.samples_path(spec, workdir)
        print(" ".join(study_lib.train_command(study, spec, workdir)))
        print(" ".join(study_lib.sample_command(spec.evaluation, spec.seed, workdir, samples)))
        print(" ".join(study_lib.eval_command(configs[spec.key], spec.evaluation,
                                              os.path.join(samples, "sample.npz"),
                                              study_lib.eval_path(spec, workdir))))
      return
    results = study_lib.run_study(study, _ROOT.value)
  except (ConfigError, FileNotFoundError, RuntimeError) as e:
    raise SystemExit(f"study.py: {e}") from e
  print(study_lib.markdown_table(results))


if __name__ == "__main__":
  app.run(main)
