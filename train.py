"""Train a video diffusion model.

    python train.py --config configs/default.py --workdir runs/default [--config.train.num_steps=...]

Running the same command again resumes from the workdir's latest checkpoint. Multi-host: pass
--coordinator_address/--num_processes/--process_id (or rely on TPU-pod / SLURM auto-detection with
--distributed); each host runs the same command.
"""

from absl import app, flags
from ml_collections import config_flags

from vdm_jax.parallel.distributed import DISTRIBUTED_FLAGS, initialize_from_flags  # noqa: F401
from vdm_jax.runtime import setup_runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py[:tiny].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go.")
flags.DEFINE_bool("strict_checkpoints", False, "Stop with an error when the latest checkpoint is "
                  "damaged, instead of resuming from the newest intact one.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  setup_runtime()
  c = FLAGS.config
  initialize_from_flags(c.train.global_batch_size // max(c.optim.grad_accum_steps, 1), dict(c.mesh))
  from vdm_jax.checkpoints import CheckpointDamaged
  from vdm_jax.train.loop import train_and_evaluate
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir, strict_checkpoints=FLAGS.strict_checkpoints)
  except CheckpointDamaged as e:
    raise SystemExit(f"train.py: {e}") from e


if __name__ == "__main__":
  app.run(main)
