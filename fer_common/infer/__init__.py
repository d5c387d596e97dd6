"""Inference: the predictor (.pth, .onnx, ensembles), face detection, folders in batches (local or Ray),
streamed result files, and the overlay drawn on images. Imports the base modules and model/ (lazily: the ONNX
path needs no PyTorch).
"""
