"""Inference, in the order a scan goes through it:

    sliding_window.py   an MR volume to the training frame, predicted window by window with Gaussian
                        blending, and back to the scan's grid in HU
    metrics.py          the synthetic CT scored against the true CT (MAE, RMSE, PSNR, SSIM)
"""
