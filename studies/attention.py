"""Claim 4: factorised space-time attention matters (where temporal attention goes, and how it
knows frame order).

    python scripts/study.py --study studies/attention.py

Temporal attention after every residual block (the default), only at the spatial-attention level
(VDM's layout), or nowhere (frames generated independently: an image model run on every frame);
and with T5 relative-position buckets (the default), rotary positions or no positions.
"""


def get_study():
  return dict(
      name="attention",
      config="configs/default.py",
      claim=("Claim 4: temporal attention is what makes frames a video: removing it, or its "
             "relative positions, should cost FVD and temporal consistency."),
      seeds=(0, 1, 2),
      overrides={},
      runs={
          "all_levels+t5": {"model.temporal_attention": "all_levels", "model.relative_position": "t5"},
          "attention_levels+t5": {"model.temporal_attention": "attention_levels"},
          "none": {"model.temporal_attention": "none"},
          "all_levels+rotary": {"model.relative_position": "rotary"},
          "all_levels+no_position": {"model.relative_position": "none"},
      },
      evaluation=dict(num_samples=256, num_real=256, num_frames=16, sampler="ddim", num_steps=64,
                      metrics=("fvd", "colour_drift", "colour_shift", "object_colour_change",
                               "object_count_instability", "object_size_change",
                               "object_acceleration")),
  )
