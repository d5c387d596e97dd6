"""Quantize a default-model ONNX file to int8 (static with calibration crops, else dynamic), checked against fp32.

    fer quantize fer_model.onnx fer_model.int8.onnx --calibration dataset/val_new    # or: python -m fer_common quantize
"""

from fer_common import cli
from fer_common.files import check_outputs
from fer_common.datasets.folders import sample_crops
from fer_common.model.quantize import MAX_CALIBRATION_IMAGES, quantize_onnx


def get_args_parser():
    parser = cli.make_parser(__doc__)
    parser.add_argument("src", type=cli.existing_file, help="fp32 ONNX file exported by the training scripts")
    parser.add_argument("dst", type=cli.output_file(".onnx"), help="int8 ONNX file to write")
    parser.add_argument("--calibration", metavar="FOLDER", type=cli.existing_dir,
                        help="image-folder data set of face crops to calibrate on (without it: dynamic quantization)")
    parser.add_argument("--images", type=cli.positive_int, default=MAX_CALIBRATION_IMAGES, help="calibration crops to use")
    parser.add_argument("--method", choices=["auto", "static", "dynamic"], default="auto", help="quantization method")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dst")
    return parser


def main(args):
    check_outputs({"dst": args.dst}, args.overwrite, inputs={"src": args.src})
    crops = sample_crops(args.calibration, args.images) if args.calibration else None
    info = quantize_onnx(args.src, args.dst, crops, method=args.method)
    print(f"int8 model ({info['method']}) -> {args.dst}")
