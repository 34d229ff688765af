"""Evaluation: MATLAB-compatible bicubic, PSNR/SSIM, benchmark datasets and the scoring runner."""
