"""The command lines of the toolkit, one module each (get_args_parser() and main(args)).

`fer NAME ...` (fer_common.__main__) and the top-level scripts of a checkout run the same module, so both
take the same flags: `fer analyse photo.jpg` is `python inference.py photo.jpg`. A command too big for one
module keeps the rest beside it: `fer serve`'s web application is serve_app (routes) and serve_http (metrics,
access log, tokens, body limits), loaded by serve.main only, so `fer serve --help` needs no web stack.
"""

# subcommand -> (module under fer_common, the checkout's script that runs the same, what it does)
COMMANDS = {
    "analyse": ("commands.analyse", "inference.py", "emotions of the faces in images and folders"),
    "video": ("commands.video", "real_time_video.py", "emotions in a video file or webcam stream"),
    "evaluate": ("commands.evaluate", "evaluate.py", "accuracy, per-class scores, confusion matrix on a data set"),
    "download": ("commands.download", "download_dataset.py", "get FER-2013 (Kaggle, a URL or a local file)"),
    "split": ("commands.split", "validation_split.py", "stratified train / validation split"),
    "train": ("commands.train", "fine_tuning.py", "train the default 48x48 CNN"),
    "train-advanced": ("commands.train_advanced", "advanced_fine_tuning.py", "fine-tune the advanced Swin model"),
    "pretrained": ("commands.pretrained", "advanced_pretrained.py", "build and export the advanced model"),
    "export": ("commands.export", None, "export a .pth checkpoint to ONNX"),
    "calibrate": ("commands.calibrate", None, "fit a model's confidence (temperature) on a data set"),
    "quantize": ("commands.quantize", None, "int8 quantization of an ONNX model"),
    "average": ("commands.average", None, "average the weights of fine-tuned models (a model soup)"),
    "web": ("commands.web", None, "serve the in-browser page on localhost"),
    "serve": ("commands.serve", None, "FER as a service: an HTTP API for images, with dynamic batching"),
}
ALIASES = {"analyze": "analyse"}
