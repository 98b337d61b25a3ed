"""Metric writers, video metrics (FVD, PSNR, SSIM, LPIPS, colour drift, object-level temporal metrics),
video files and grids.

Submodules are imported on use (`from vdm_jax.metrics import fvd`) so that importing the package
pulls in neither TensorFlow nor the I3D weights.
"""
