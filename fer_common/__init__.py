"""Shared library of the FER toolkit: everything the scripts have in common lives here, once.

Modules, each named for what it holds:
    labels      emotion names and the folder names data sets use for them
    cli         argument groups shared by the scripts, and the one-line error handling
    files       atomic writes
    device      device selection, autocast / grad scaler, GPU memory clearing
    preprocess  per-model preprocessing config and the transforms built from it
    data        image-folder data sets, class checks, the in-memory uint8 data set
    models      the default CNN and the advanced timm-backbone model
    checkpoint  the self-describing checkpoint dict: save, load, rebuild the model
    onnx_export ONNX export with a parity check, and reading an exported file's metadata
    training    early stopping and the training loop both training scripts use
    metrics     accuracy, per-class scores, the confusion-matrix picture
    predictor   one predictor for .pth and .onnx files: face crops in, probabilities and embeddings out
    detection   face detection (OpenCV Haar cascade, or YuNet) and face crops
    overlay     boxes, labels and non-overlapping probability bars drawn on frames
    video       the video / webcam loop: tracking, smoothing, CSV log, output video
    download    getting FER-2013 from Kaggle, a URL or a local file (format readers in fer2013)
    splitting   the stratified train / validation split
    quantize    int8 quantization of an exported ONNX model
"""

__version__ = "0.1.0"
