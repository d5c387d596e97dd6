"""Fit a trained model's temperature on a folder data set (its validation split) and save the model with it.

    fer calibrate fer_model.pth --data dataset/val_new --output fer_model.calibrated.pth    # or python -m fer_common calibrate
"""

from fer_common import cli
from fer_common.model.calibration import calibrate_file


def get_args_parser():
    parser = cli.make_parser(__doc__)
    parser.add_argument("model", type=cli.existing_file, help="a .pth checkpoint or .onnx file of this toolkit")
    parser.add_argument("--data", default="dataset/val_new", type=cli.path_arg,
                        help="folder with one sub-folder of images per class")
    parser.add_argument("--output", required=True, type=cli.output_file(".pth", ".onnx"),
                        help="where the calibrated model goes (same extension)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists (it may be the model)")
    return parser


def main(args):
    r = calibrate_file(args.model, args.data, args.output, args.overwrite)
    print(f"temperature {r['temperature']:.3f} on {r['images']} images of {args.data}: expected calibration "
          f"error {r['ece_before'] * 100:.2f}% -> {r['ece_after'] * 100:.2f}%; saved {args.output}")
