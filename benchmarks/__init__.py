"""Benchmarks of the toolkit: model latency (PyTorch / ONNX Runtime fp32 / int8), the video pipeline, training.

    python -m benchmarks.run            # everything; --quick for a smoke run, --only models|video|training
"""
