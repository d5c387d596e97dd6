"""Shared library of the FER toolkit: everything the scripts have in common lives here, once.

    from fer_common import FER  # the Python API (fer_common.api): FER().analyse("photo.jpg")

Modules, each named for what it holds:
    api         FER: the Python API over the objects below
    commands    every command line (get_args_parser + main): the `fer` subcommands and the top-level scripts
    errors      FERError, the one error type (told in one line, no traceback)
    model_info  what a model file says about itself (classes, preprocessing, calibration), checked, no torch
    results     the result model: Face, Result, their JSON and table views (one place they are made)
    writers     streamed .jsonl / .csv result files: provenance, resume, links and concurrent runs refused
    labels      class names (FER-2013's emotions by default), how folders spell them, count tables
    cli         argument types and groups shared by the scripts, and the one-line error handling
    files       image extensions, atomic writes, output checks, folders replaced whole
    shipped     where the shipped model files are (models/ of a checkout, or the installed package)
    device      device selection, CPU thread counts, autocast / grad scaler, GPU memory clearing
    preprocess  per-model preprocessing config and the transforms built from it
    augmentation training augmentation: the batched warp, and blur/JPEG/noise/erasing of --augmentation broad
    data        image-folder data sets, class checks, the in-memory uint8 data set
    models      the default CNN and the advanced timm-backbone model
    checkpoint  the self-describing checkpoint dict: save, load, rebuild the model, start from one (--init_from)
    onnx_export ONNX export with a parity check, and reading an exported file's metadata
    runtime     ONNX Runtime providers and sessions
    training    the training loop of both scripts: one epoch, evaluation, the whole run (`train`)
    training_args  the training scripts' flag groups and the files they name (X.last.pth, X_metrics.json)
    early_stopping early stopping with confirmation epochs (its state resumes)
    recipes     weight EMA, mixup, distillation from trained teachers
    distributed the torchrun process group: rank, device, sums across processes
    averaging   weight averaging of fine-tuned models (a model soup; `fer average`)
    calibration temperature scaling, expected calibration error, the reliability diagram
    metrics     softmax, accuracy, per-class scores, the confusion-matrix picture
    predictor   one predictor for .pth and .onnx files (and ensembles): crops in, probabilities out
    detection   face detection (YuNet, shipped; or OpenCV's Haar cascade) and face crops in FER-2013 framing
    bulk        folders of images in threaded batches (classify_batch: the unit of work of every engine)
    cluster     the same batches on a Ray cluster (inference.py --engine ray; the [cluster] extra)
    overlay     boxes, labels and non-overlapping probability bars drawn on frames
    tracking    face tracks across video frames
    video       the video / webcam pipeline and its outputs (window, video file, CSV log)
    summary     per-face summaries of a video (live or from its CSV log) and their plot
    download    getting FER-2013 from Kaggle, a URL or a local file (format readers in fer2013)
    splitting   the stratified train / validation split
    quantize    int8 quantization of an exported ONNX model
    web         serves the in-browser page (web/) and the shipped model files on localhost
"""

__version__ = "0.2.0"


def __getattr__(name):
    # The API loads torch, OpenCV and ONNX Runtime: only when asked for, not for every `import fer_common.cli`.
    if name in ("FER", "Face", "Result"):
        from fer_common import api
        return getattr(api, name)
    raise AttributeError(f"module 'fer_common' has no attribute '{name}'")
