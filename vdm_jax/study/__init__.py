"""Studies: a declarative list of runs that one command trains, samples, evaluates and tabulates.

`spec.py` reads and validates a study file, `run.py` runs what is missing (train.py, sample.py,
scripts/evaluate.py, each in a subprocess), `table.py` writes the table.
"""

from vdm_jax.study.run import (
    eval_command,
    eval_path,
    flag_value,
    run_logged,
    run_study,
    sample_command,
    samples_path,
    train_command,
)
from vdm_jax.study.spec import (
    REPO,
    RunSpec,
    Study,
    StudyEval,
    build_config,
    load_study,
    validate_study,
)
from vdm_jax.study.table import aggregate, markdown_table

__all__ = ["REPO", "RunSpec", "Study", "StudyEval", "aggregate", "build_config", "eval_command",
           "eval_path", "flag_value", "load_study", "markdown_table", "run_logged", "run_study",
           "sample_command", "samples_path", "train_command", "validate_study"]
