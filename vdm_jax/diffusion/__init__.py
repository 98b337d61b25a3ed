"""The diffusion core: schedule, parameterisations, loss, samplers and guidance (pure jnp functions).

Nothing here knows the model: everything takes a `denoise_fn(z, logsnr, cond) -> prediction`.
"""

from vdm_jax.diffusion.config import DiffusionConfig
from vdm_jax.diffusion.distillation import DistillConfig, distillation_loss, teacher_target
from vdm_jax.diffusion.guidance import (
                                        classifier_free_guidance,
                                        frame_guidance_weights,
                                        reconstruction_guidance,
                                        replace_known_frames,
)
from vdm_jax.diffusion.losses import WEIGHTINGS, diffusion_loss, log_weight
from vdm_jax.diffusion.parameterization import (
                                        PREDICTIONS,
                                        eps_from_v,
                                        eps_from_x,
                                        target_for,
                                        to_x_eps,
                                        v_from_x_eps,
                                        x_from_eps,
                                        x_from_v,
)
from vdm_jax.diffusion.samplers import (
                                        MULTISTEP_SAMPLERS,
                                        SAMPLERS,
                                        SamplerConfig,
                                        ancestral_update,
                                        carry_sample,
                                        ddim_coefficients,
                                        ddim_update,
                                        dpmpp2m_update,
                                        initial_carry,
                                        initial_noise,
                                        make_predict_fn,
                                        multistep_step,
                                        sample,
                                        sample_loop,
                                        sampler_step,
)
from vdm_jax.diffusion.schedule import (
                                        CosineSchedule,
                                        alpha_sigma,
                                        angle_from_logsnr,
                                        noise_level_from_logsnr,
                                        resolution_shift,
                                        sample_times,
                                        sample_training_logsnr,
)

__all__ = [
    "CosineSchedule", "DiffusionConfig", "DistillConfig", "MULTISTEP_SAMPLERS", "PREDICTIONS",
    "SAMPLERS", "SamplerConfig", "WEIGHTINGS", "alpha_sigma", "ancestral_update",
    "angle_from_logsnr", "carry_sample", "classifier_free_guidance", "ddim_coefficients",
    "ddim_update", "diffusion_loss", "distillation_loss", "dpmpp2m_update", "eps_from_v",
    "eps_from_x", "frame_guidance_weights", "initial_carry", "initial_noise", "log_weight",
    "make_predict_fn", "multistep_step", "noise_level_from_logsnr", "reconstruction_guidance",
    "replace_known_frames", "resolution_shift", "sample", "sample_loop", "sample_times",
    "sample_training_logsnr", "sampler_step", "target_for", "teacher_target", "to_x_eps",
    "v_from_x_eps", "x_from_eps", "x_from_v",
]
