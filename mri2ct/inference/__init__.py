"""Inference: the trained network run on scans, here or outside this project (onnx_graph.py)."""
