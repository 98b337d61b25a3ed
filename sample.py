"""Sample videos from a training run's checkpoint.

    python sample.py --workdir runs/default [--step N] [--num_samples 16] [--sampler ddim --num_steps 64]

Sampler flags left unset take the run config's `sample` section (what training sampled with).
The model is rebuilt from the checkpoint's manifest (no --config needed) and the EMA parameters
(--noema: the raw ones) are restored onto the devices present, the batch sharded over them.
Examples:
    --sampler ancestral --gamma 0.1 --corrector_steps 1          VDM's predictor-corrector
    --guidance_weight 1 [--guidance_weight_end 2.5]              classifier-free (rising over frames)
    --cond_frames 2 [--cond_video clip.mp4] --frame_method reconstruction --reconstruction_weight 9
    --num_frames 32 --overlap 4                                  autoregressive extension
    --motion 24 [--fps 8]                                        micro-conditioning (SVD)
    --cascade runs/base,runs/tsr,runs/ssr [--cascade_aug_levels 0.1]   a cascade (no --workdir)
Writes MP4 and GIF per sample, grids, a strip PNG, sample.npz (uint8 [N, T, H, W, C]) and
protocol.json into --output_dir (default WORKDIR/samples/sample_<step>_<sampler><steps>_seed<seed>).
"""

import dataclasses

from absl import app, flags

from vdm_jax.diffusion.samplers import SAMPLERS, SamplerConfig
from vdm_jax.parallel.distributed import DISTRIBUTED_FLAGS, initialize_from_flags  # noqa: F401
from vdm_jax.runtime import setup_runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The training run's --workdir (holds checkpoints/); or --cascade.")
flags.DEFINE_list("cascade", None, "Instead of --workdir: comma-separated workdirs of a cascade, the "
                  "base run first, then each super-resolution stage (trained with a cascade "
                  "section). Each stage is conditioned on the previous one's samples; writes the "
                  "final samples into --output_dir and each earlier stage's into its stage<i>/.")
flags.DEFINE_list("cascade_aug_levels", None, "Augmentation noise level in [0, 1] of each "
                  "super-resolution stage's conditioning (one for all, or one per stage); default "
                  "each stage's cascade.sample_aug_level.")
flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
flags.DEFINE_string("output_dir", None, "Where to write; default under WORKDIR/samples/.")
flags.DEFINE_bool("ema", True, "Sample with the EMA parameters (--noema: the raw parameters).")
flags.DEFINE_integer("num_samples", 8, "Videos to generate.")
flags.DEFINE_integer("batch_size", None, "Videos per compiled call; default all at once.")
flags.DEFINE_integer("seed", 0, "Random seed.")
# The sampler flags (--sampler, --num_steps, --eta, --gamma, --clip_x, --corrector_steps,
# --corrector_delta) come from diffusion.SamplerConfig's fields; unset ones keep the run config's
# sample section.
_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float}


def _sampler_flag(field: dataclasses.Field) -> flags.FlagHolder:
  help_text = field.metadata.get("help", field.name) + " Default: the run config's sample section."
  if field.name == "sampler":
    return flags.DEFINE_enum("sampler", None, list(SAMPLERS), help_text)
  return _DEFINE[type(field.default)](field.name, None, help_text)


SAMPLER_FLAGS = {f.name: _sampler_flag(f) for f in dataclasses.fields(SamplerConfig)}
flags.DEFINE_float("guidance_weight", None, "Classifier-free guidance weight w (conditional models); "
                   "default the config's sample.guidance_weight.")
flags.DEFINE_float("guidance_weight_end", None, "If set, w rises linearly over the frames to this.")
flags.DEFINE_list("labels", None, "Class labels, one for all or one per sample.")
flags.DEFINE_integer("cond_frames", None, "Known leading frames k; default the model's train.cond_frames.")
flags.DEFINE_string("cond_video", None, "Video file giving the k known frames; default a dataset split.")
flags.DEFINE_string("cond_split", None, "Dataset split for the known frames; default the eval split.")
flags.DEFINE_enum("frame_method", None, ["model", "reconstruction", "replacement"],
                  "How known frames condition: model channels, reconstruction guidance, replacement.")
flags.DEFINE_float("reconstruction_weight", 10.0, "Reconstruction guidance weight w_r (VDM 3.1).")
flags.DEFINE_integer("num_frames", None, "Total frames; more than the training length extends.")
flags.DEFINE_integer("overlap", None, "Frames of the previous block each extension block sees.")
flags.DEFINE_integer("progress_chunks", 8, "Jitted chunks of the step loop (a log line after each).")
flags.DEFINE_integer("fps", None, "Frames per second of the video files; default the config's. A "
                     "model micro-conditioned on fps is also conditioned on it (default: the training "
                     "set's median).")
flags.DEFINE_float("motion", None, "Motion score to condition on (pixels/s at 64x64, as "
                   "make_video_dataset.py --curate stores it): more or less motion, for a model "
                   "trained with model.micro_conditioning=('motion',); default the training set's "
                   "median.")
flags.DEFINE_bool("strict_checkpoints", False, "Stop with an error when the latest checkpoint is "
                  "damaged, instead of sampling from the newest intact one.")
# Flags passed through as generation.GenerateOptions fields of the same name.
_OPTION_FLAGS = ("num_samples", "batch_size", "seed", "guidance_weight", "guidance_weight_end",
                 "labels", "cond_frames", "cond_video", "cond_split", "frame_method",
                 "reconstruction_weight", "num_frames", "overlap", "progress_chunks", "motion")


def _sample_cascade(options: dict) -> str:
  """--cascade: every stage's latest (intact) checkpoint, sampled in a chain."""
  from vdm_jax.generation import sample_cascade
  if FLAGS.step is not None:
    raise ValueError("--step cannot be used with --cascade (each stage's latest checkpoint is used)")
  levels = None
  if FLAGS.cascade_aug_levels:
    try:
      levels = [float(v) for v in FLAGS.cascade_aug_levels]
    except ValueError:
      raise ValueError(f"--cascade_aug_levels={','.join(FLAGS.cascade_aug_levels)}: give numbers "
                       "in [0, 1]") from None
  output_dir, _ = sample_cascade(FLAGS.cascade, FLAGS.output_dir, aug_levels=levels,
                                 use_ema=FLAGS.ema, fallback=not FLAGS.strict_checkpoints,
                                 fps=FLAGS.fps, **options)
  return output_dir


def main(argv):
  del argv
  if bool(FLAGS.workdir) == bool(FLAGS.cascade):
    raise SystemExit("sample.py: pass --workdir (one run) or --cascade (a chain of runs), not both")
  if FLAGS.cascade_aug_levels and not FLAGS.cascade:
    raise SystemExit("sample.py: --cascade_aug_levels needs --cascade")
  setup_runtime()
  initialize_from_flags()
  from vdm_jax.generation import sample_and_save
  options = {name: flag.value for name, flag in SAMPLER_FLAGS.items()}
  options.update({name: getattr(FLAGS, name) for name in _OPTION_FLAGS})
  if options["labels"] is not None:
    options["labels"] = [int(label) for label in options["labels"]]
  try:
    if FLAGS.cascade:
      output_dir = _sample_cascade(options)
    else:
      output_dir, _ = sample_and_save(FLAGS.workdir, FLAGS.output_dir, fps=FLAGS.fps,
                                      step=FLAGS.step, use_ema=FLAGS.ema,
                                      fallback=not FLAGS.strict_checkpoints, **options)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"sample.py: {e}") from e
  print(f"Samples: {output_dir}")


if __name__ == "__main__":
  app.run(main)
