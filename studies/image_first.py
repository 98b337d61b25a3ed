"""Claim 5 (Make-A-Video, Video LDM): learn appearance from images first, then motion from video, at
equal total steps with a video model trained from scratch.

    python scripts/study.py --study studies/image_first.py

Rows (3,000 steps of batch 8 in total for every video model, as the default config):
  scratch            the default video model, 3,000 steps from random initialisation;
  image              the same U-Net with temporal attention off (every frame generated on its
                     own: an image model trained on the clips' frames), 2,000 steps; its row is
                     the "no motion model" reference;
  inflated_temporal  starts from `image` (train.init_from: its EMA parameters; the temporal layers
                     added at identity by their zero output projection) and trains only the
                     temporal layers (optim.trainable=temporal) for 1,000 steps;
  inflated_all       the same start, every layer trained for 1,000 steps.
The table's CPU column is each run's own training: an image step costs less than a video step
(no temporal attention), so "equal steps" is slightly less compute for the inflated rows; their
total is image + their own.
"""


def get_study():
  return dict(
      name="image_first",
      config="configs/default.py",
      claim=("Claim 5: a video model started from an image model (temporal layers added at "
             "identity) matches or beats one trained on video from scratch at equal total steps."),
      seeds=(0, 1, 2),
      overrides={},
      runs={
          "scratch": {},
          "image": {"model.temporal_attention": "none", "train.num_steps": 2000},
          "inflated_temporal": {"train.init_from": "@run:image", "optim.trainable": "temporal",
                                "train.num_steps": 1000},
          "inflated_all": {"train.init_from": "@run:image", "train.num_steps": 1000},
      },
      evaluation=dict(num_samples=256, num_real=256, num_frames=16, sampler="ddim", num_steps=64,
                      metrics=("fvd", "colour_drift", "colour_shift", "object_colour_change",
                               "object_count_instability", "object_size_change",
                               "object_acceleration")),
  )
