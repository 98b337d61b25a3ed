"""Claim 2 (VDM Table 4: FVD 202 -> 68 -> 58 with 0 / 4 / 8 extra image frames): joint image-video
training, at equal steps.

    python scripts/study.py --study studies/joint_training.py

K independent image frames are appended to each 8-frame clip (data.image_frames); temporal
attention is masked for them (identity), so the model learns the same per-frame content from more
frames. Equal steps, not equal wall time: a step with K=8 costs about twice K=0's (16 frames
instead of 8); the table's train CPU column says how much; the equal-time rows are
`--set train.num_steps=...` reruns with the measured ratio.
"""


def get_study():
  return dict(
      name="joint_training",
      config="configs/default.py",
      claim=("Claim 2: adding independent image frames to each video batch improves video FVD "
             "(VDM Table 4: 202 / 68 / 58 for 0 / 4 / 8 image frames)."),
      seeds=(0, 1, 2),
      overrides={},
      runs={f"K{k}": {"data.image_frames": k} for k in (0, 4, 8)},
      evaluation=dict(num_samples=256, num_real=256, num_frames=16, sampler="ddim", num_steps=64,
                      metrics=("fvd", "colour_drift", "colour_shift", "object_colour_change",
                               "object_count_instability", "object_size_change",
                               "object_acceleration")),
  )
