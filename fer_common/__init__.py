"""Shared library of the FER toolkit: everything the scripts have in common lives here, once.

    from fer_common import FER                       # the Python API: FER().analyse("photo.jpg")
    from fer_common import Predictor, FaceDetector   # the objects under it, for finer control

The package face (this module) names the public objects; each lives in one module of one layer (README,
package map). Base modules at the top import only each other and never PyTorch; the sub-packages:
    model/      networks, their flags, the checkpoint, ONNX export, int8 quantization, calibration, averaging
    datasets/   FER-2013 download and import, the class-folder walk, the validation split
    infer/      the predictor, face detection, folders in batches (local, Ray), result files, the overlay,
                the dynamic batcher (fer serve)
    train/      the training loop, its flags, loaders, augmentation, recipes, early stopping, torchrun
    video/      options, source, pipeline, sinks, window, run loop, tracking, per-face summaries
    commands/   every command line (`fer NAME` and the top-level scripts), the browser page's server and the
                HTTP service (fer serve: serve_app, serve_http)
    compat/     the `fer` and deepface packages' APIs on this toolkit: their code runs with one changed import
"""

from fer_common.version import __version__  # noqa: F401

# name -> module that holds it; loaded on first use, so `import fer_common` stays light (no OpenCV,
# ONNX Runtime or PyTorch until an object that needs them is asked for).
PUBLIC = {
    "FER": "fer_common.api",
    "Face": "fer_common.results", "Result": "fer_common.results", "to_dataframe": "fer_common.results",
    "FERError": "fer_common.errors",
    "Predictor": "fer_common.infer.predictor", "Ensemble": "fer_common.infer.predictor",
    "FaceDetector": "fer_common.infer.detection",
    "analyse_folder": "fer_common.infer.bulk",
    "Overlay": "fer_common.infer.overlay",
    "analyse_frames": "fer_common.video.pipeline", "VideoPipeline": "fer_common.video.pipeline",
    "FaceSummary": "fer_common.video.summary",
    "quantize_onnx": "fer_common.model.quantize",
}
__all__ = ["__version__", *PUBLIC]


def __getattr__(name):
    if name in PUBLIC:
        import importlib

        return getattr(importlib.import_module(PUBLIC[name]), name)
    raise AttributeError(f"module 'fer_common' has no attribute '{name}'")
