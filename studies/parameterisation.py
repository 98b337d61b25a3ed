"""Claim 1 (Imagen Video; the survey's headline): v-prediction avoids eps-prediction's colour shift.

    python scripts/study.py --study studies/parameterisation.py

The same model and steps as configs/default.py (8x16x16 moving_shapes, 3,000 steps), predicting
v (v-MSE, Imagen Video), eps (eps-MSE, DDPM/VDM) or x (truncated-SNR weighting max(SNR, 1),
Salimans & Ho 2022): each target with the loss weighting its paper uses. Evaluated on 16-frame
videos (the 8-frame model extended by reconstruction guidance) for FVD, colour drift and the
object-level temporal metrics. studies/parameterisation_32.py repeats it at 32x32.
"""


def get_study():
  return dict(
      name="parameterisation",
      config="configs/default.py",
      claim=("Claim 1: eps-prediction shows temporal colour shifts that v-prediction in the angular "
             "parameterisation avoids (Imagen Video, section 2.6.1)."),
      seeds=(0, 1, 2),
      overrides={},
      runs={
          "v": {"diffusion.prediction": "v", "model.prediction": "v", "diffusion.weighting": "v"},
          "eps": {"diffusion.prediction": "eps", "model.prediction": "eps",
                  "diffusion.weighting": "eps"},
          "x": {"diffusion.prediction": "x", "model.prediction": "x",
                "diffusion.weighting": "truncated_snr"},
      },
      evaluation=dict(num_samples=256, num_real=256, num_frames=16, sampler="ddim", num_steps=64,
                      metrics=("fvd", "colour_drift", "colour_shift", "object_colour_change",
                               "object_count_instability", "object_size_change",
                               "object_acceleration")),
  )
