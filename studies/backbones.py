"""The U-Net against the video DiT at equal CPU time (issue 16), on the default's data.

    python scripts/study.py --study studies/backbones.py

`unet` is configs/default.py as it is (3,000 steps). `dit_equal_time` is configs/default_dit.py's
model (`model.backbone=dit`; the DiT fields' defaults are that model: width 64, 4 blocks, 2x2
patches, factorised attention, rotary positions) trained for the same CPU time: its quiet step is
0.455 s against the U-Net's 0.154 s on the 2-core AMD EPYC (benchmarks/train_step.py, one device
per core), so 3,000 x 0.154 / 0.455 = 1,015, rounded to 1,000 steps. `dit_equal_steps` gives the
DiT the U-Net's 3,000 steps (three times its CPU time). Sampling: DPM-Solver++(2M) with 16 model
calls a block, 8-frame blocks extended to 16 frames with overlap 4 by reconstruction guidance.
"""


def get_study():
  return dict(
      name="backbones",
      config="configs/default.py",
      claim=("Issue 16: which backbone gives better videos for the same CPU time on this machine, "
             "the space-time U-Net or the video DiT of equal FLOPs a step."),
      seeds=(0,),
      overrides={},
      runs={
          "unet": {},
          "dit_equal_time": {"model.backbone": "dit", "train.num_steps": 1000},
          "dit_equal_steps": {"model.backbone": "dit"},
      },
      evaluation=dict(num_samples=256, num_real=256, num_frames=16, sampler="dpmpp2m", num_steps=16,
                      batch_size=64, sample_flags={"overlap": 4},
                      metrics=("fvd", "colour_drift", "colour_shift", "object_colour_change",
                               "object_count_instability", "object_size_change",
                               "object_acceleration")),
  )
