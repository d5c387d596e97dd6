"""Export a checkpoint of this toolkit to ONNX, its calibration included (the training scripts do this at the end
of a run; this re-exports any checkpoint).

    fer export fer_model.pth fer_model.onnx          # or: python -m fer_common export ...
"""

from fer_common import cli
from fer_common.errors import FERError
from fer_common.files import check_outputs


def get_args_parser():
    parser = cli.make_parser(__doc__)
    parser.add_argument("checkpoint", type=cli.existing_file, help="a .pth checkpoint written by this toolkit")
    parser.add_argument("output", type=cli.output_file(".onnx"), help="the ONNX file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def main(args):
    check_outputs({"output": args.output}, args.overwrite, inputs={"checkpoint": args.checkpoint})
    from fer_common.model.checkpoint import load_checkpoint, model_from_checkpoint
    from fer_common.model.onnx_export import export_onnx

    try:
        ckpt = load_checkpoint(args.checkpoint)
    except FERError as e:
        # load_checkpoint's hint names training's --model_type, which this command does not have.
        if "--model_type" not in str(e):
            raise
        raise FERError(f"{args.checkpoint} holds bare weights with no model type, class names or preprocessing: "
                       f"export a checkpoint written by this toolkit's training scripts") from None
    model = model_from_checkpoint(ckpt, args.checkpoint)
    export_onnx(model, args.output, ckpt["model_type"], ckpt["class_names"], ckpt["preprocessing"],
                calibration=ckpt.get("calibration"))
    print(f"ONNX model -> {args.output}")
