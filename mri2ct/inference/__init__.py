"""Inference, in the order a scan goes through it:

    sliding_window.py   an MR volume to the training frame, predicted window by window with Gaussian
                        blending, and back to the scan's grid in HU
    metrics.py          the synthetic CT scored against the true CT (MAE, RMSE, PSNR, SSIM)
    onnx_graph.py       the same network as an ONNX graph with the pre- and post-processing as
                        metadata, to run outside this project
"""
