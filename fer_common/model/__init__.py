"""Models and model files: the networks, the checkpoint format, ONNX export, int8 quantization,
temperature calibration and weight averaging. Imports the base modules only; PyTorch lives here and in train/.
"""
