"""Fit a trained model's temperature on a folder data set (its validation split) and save the model with it.

    fer calibrate fer_model.pth --data dataset/val_new --output fer_model.calibrated.pth    # or python -m fer_common calibrate
"""

from pathlib import Path

import numpy as np

from fer_common import cli
from fer_common.datasets.folders import list_samples
from fer_common.errors import FERError
from fer_common.files import atomic_path, check_outputs, strict_json
from fer_common.infer.bulk import iter_results
from fer_common.infer.predictor import Predictor
from fer_common.model.calibration import MIN_IMAGES, fit_calibration
from fer_common.model_info import set_metadata
from fer_common.results import probability_matrix


def calibrate_file(model_path, data, output, overwrite: bool = False, batch_size: int = 512,
                   min_images: int = MIN_IMAGES) -> dict:
    """Fit the temperature of a .pth or .onnx model on a folder data set and write the model with it to `output`."""
    model_path, output = Path(model_path), Path(output)
    check_outputs({"calibrated model": output}, overwrite, data={"--data": data})   # it may replace the model
    if output.suffix.lower() != model_path.suffix.lower():
        raise FERError(f"{output} must have the same extension as {model_path}")
    predictor = Predictor(model_path, device="cpu")
    samples, folder_classes = list_samples(data)
    unknown = [c for c in folder_classes if c not in predictor.class_names]
    if unknown:
        raise FERError(f"{data} has classes the model {model_path} does not know: {', '.join(unknown)} "
                       f"(it predicts {', '.join(predictor.class_names)})")
    to_model = [predictor.class_names.index(c) for c in folder_classes]
    raw = predictor.with_temperature(1.0)     # the uncalibrated probabilities, through the bulk reader
    results = [r for r in iter_results(raw, [str(p) for p, _ in samples], batch_size=batch_size) if r.error is None]
    if not results:
        raise FERError(f"no readable images in {data}")
    # log-probabilities are the logits up to a shift per row, which softmax ignores
    logits = np.log(np.maximum(np.concatenate([probability_matrix(r, raw.class_names) for r in results]), 1e-12))
    labels = np.asarray([to_model[samples[r.index][1]] for r in results])
    if len(labels) < min_images:
        raise FERError(f"{data} has {len(labels)} readable images; a temperature fitted on fewer than {min_images} "
                       f"follows their noise (it can make every prediction read 100%): give a larger --data, "
                       f"the validation split, or lower --min_images deliberately")
    result = fit_calibration(logits, labels, str(data), min_images)
    if model_path.suffix.lower() == ".onnx":
        try:
            import onnx
        except ImportError:
            raise FERError("writing a calibrated ONNX file needs the onnx package: pip install 'fer-toolkit[train]'") from None
        proto = onnx.load(str(model_path))
        set_metadata(proto, {**{p.key: p.value for p in proto.metadata_props}, "calibration": strict_json(result)})
        with atomic_path(output, suffix=".onnx") as tmp:
            onnx.save(proto, str(tmp))
    else:
        from fer_common.model.checkpoint import load_checkpoint, save_checkpoint

        ckpt = load_checkpoint(model_path)
        ckpt["calibration"] = result
        save_checkpoint(ckpt, output)
    return result


def get_args_parser():
    parser = cli.make_parser(__doc__)
    parser.add_argument("model", type=cli.existing_file, help="a .pth checkpoint or .onnx file of this toolkit")
    parser.add_argument("--data", default="dataset/val_new", type=cli.path_arg,
                        help="folder with one sub-folder of images per class")
    parser.add_argument("--output", required=True, type=cli.output_file(".pth", ".onnx"),
                        help="where the calibrated model goes (same extension)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists (it may be the model)")
    parser.add_argument("--min_images", type=cli.positive_int, default=MIN_IMAGES,
                        help="refuse to fit on fewer readable images (a temperature fitted on a few follows noise)")
    return parser


def main(args):
    r = calibrate_file(args.model, args.data, args.output, args.overwrite, min_images=args.min_images)
    print(f"temperature {r['temperature']:.3f} on {r['images']} images of {args.data}: expected calibration "
          f"error {r['ece_before'] * 100:.2f}% -> {r['ece_after'] * 100:.2f}%; saved {args.output}")
