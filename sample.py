"""Sample videos from a training run's checkpoint.

    python sample.py --workdir runs/default [--step N] [--num_samples 16] [--sampler ddim --num_steps 64]

The model is rebuilt from the checkpoint's manifest (no --config needed) and the EMA parameters
(--noema: the raw ones) are restored onto the devices present, the batch sharded over them.
Examples:
    --sampler ancestral --gamma 0.1 --corrector_steps 1          VDM's predictor-corrector
    --guidance_weight 1 [--guidance_weight_end 2.5]              classifier-free (rising over frames)
    --cond_frames 2 [--cond_video clip.mp4] --frame_method reconstruction --reconstruction_weight 9
    --num_frames 32 --overlap 4                                  autoregressive extension
Writes MP4 and GIF per sample, grids, a strip PNG, sample.npz (uint8 [N, T, H, W, C]) and
protocol.json into --output_dir (default WORKDIR/samples/sample_<step>_<sampler><steps>_seed<seed>).
"""

from absl import app, flags

from vdm_jax.parallel.distributed import DISTRIBUTED_FLAGS, initialize_from_flags  # noqa: F401
from vdm_jax.runtime import setup_runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The training run's --workdir (holds checkpoints/).")
flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
flags.DEFINE_string("output_dir", None, "Where to write; default under WORKDIR/samples/.")
flags.DEFINE_bool("ema", True, "Sample with the EMA parameters (--noema: the raw parameters).")
flags.DEFINE_integer("num_samples", 8, "Videos to generate.")
flags.DEFINE_integer("batch_size", None, "Videos per compiled call; default all at once.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_enum("sampler", "ddim", ["ddim", "ancestral"], "Sampler.")
flags.DEFINE_integer("num_steps", None, "Sampler steps; default the config's sample.num_steps.")
flags.DEFINE_float("eta", 0.0, "DDIM stochasticity in [0, 1].")
flags.DEFINE_float("gamma", 0.0, "Ancestral variance interpolation in [0, 1] (VDM: 0.1 UCF).")
flags.DEFINE_integer("corrector_steps", 0, "Langevin corrector steps after each step.")
flags.DEFINE_float("corrector_delta", 0.1, "Langevin corrector step size.")
flags.DEFINE_bool("clip_x", True, "Clip the predicted x to [-1, 1] at every step.")
flags.DEFINE_float("guidance_weight", 0.0, "Classifier-free guidance weight w (conditional models).")
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
flags.DEFINE_integer("fps", None, "Frames per second of the video files; default the config's.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  setup_runtime()
  initialize_from_flags()
  from vdm_jax.sampling import sample_and_save
  try:
    output_dir, _ = sample_and_save(
        FLAGS.workdir, FLAGS.output_dir, fps=FLAGS.fps, step=FLAGS.step, use_ema=FLAGS.ema,
        num_samples=FLAGS.num_samples, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        sampler=FLAGS.sampler, num_steps=FLAGS.num_steps, eta=FLAGS.eta, gamma=FLAGS.gamma,
        corrector_steps=FLAGS.corrector_steps, corrector_delta=FLAGS.corrector_delta,
        clip_x=FLAGS.clip_x, guidance_weight=FLAGS.guidance_weight,
        guidance_weight_end=FLAGS.guidance_weight_end,
        labels=None if FLAGS.labels is None else [int(l) for l in FLAGS.labels],
        cond_frames=FLAGS.cond_frames, cond_video=FLAGS.cond_video, cond_split=FLAGS.cond_split,
        frame_method=FLAGS.frame_method, reconstruction_weight=FLAGS.reconstruction_weight,
        num_frames=FLAGS.num_frames, overlap=FLAGS.overlap, progress_chunks=FLAGS.progress_chunks)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"sample.py: {e}") from e
  print(f"Samples: {output_dir}")


if __name__ == "__main__":
  app.run(main)
