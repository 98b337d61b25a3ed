"""Generation: the jitted sampler, planning of conditioning and extension, running, writing.

Used alike by sample.py (sample_and_save), evaluation (generate_from_workdir) and the trainer's
periodic samples (generate on a SamplingModel holding its live EMA parameters).

  sampler.py  make_chunk_fn: the jitted chunk of the step loop with guidance and known frames
  plan.py     GenerateOptions, plan(): defaults from the run's config, checks before compiling
  run.py      SamplingModel, restore_model, generate, generate_from_workdir; writing:
              default_output_dir, write_samples, sample_and_save
  lowres.py   a cascade super-resolution stage's noised conditioning (stage_input)
  cascade.py  sample_cascade: base, then super-resolution stages; check_chain before compiling
"""

from vdm_jax.generation.cascade import CascadeStage, check_chain, read_cascade, sample_cascade
from vdm_jax.generation.plan import GenerateOptions, Plan, options_from, plan
from vdm_jax.generation.run import (
    SamplingModel,
    default_output_dir,
    generate,
    generate_from_workdir,
    restore_model,
    sample_and_save,
    write_samples,
)
from vdm_jax.generation.sampler import FRAME_METHODS, make_chunk_fn, make_chunk_fn_from_denoiser

__all__ = ["FRAME_METHODS", "CascadeStage", "GenerateOptions", "Plan", "SamplingModel",
           "check_chain", "default_output_dir", "generate", "generate_from_workdir", "make_chunk_fn",
           "make_chunk_fn_from_denoiser", "options_from", "plan", "read_cascade", "restore_model",
           "sample_and_save", "sample_cascade", "write_samples"]
