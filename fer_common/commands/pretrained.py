"""Build the advanced FER model (timm Swin-Base backbone -> 128-d embedding -> 7 emotions), save and export it.

    python advanced_pretrained.py

Writes fer_model_advanced.pth (a checkpoint advanced_fine_tuning.py can start from with --resume) and
fer_model_advanced.onnx. The backbone starts from timm's ImageNet weights; the embedding and classifier
layers are untrained until the model is fine-tuned. With --checkpoint, a trained model is re-exported instead.
"""


from fer_common.cli import existing_file, make_parser, output_file, path_arg
from fer_common.files import check_outputs
from fer_common.labels import EMOTIONS
from fer_common.model.config import add_model_args, model_config_from_args


def get_args_parser():
    parser = make_parser(__doc__)
    add_model_args(parser, "advanced")
    g = parser.add_argument_group("Input / output")
    g.add_argument("--checkpoint", type=existing_file, help="export this trained advanced checkpoint instead of building a fresh model")
    g.add_argument("--output_checkpoint", default="fer_model_advanced.pth", type=path_arg, help="checkpoint to write")
    g.add_argument("--output_onnx", default="fer_model_advanced.onnx", type=output_file(".onnx"), help="ONNX file to write")
    g.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def main(args):
    outputs = {"--output_onnx": args.output_onnx}
    if not args.checkpoint:
        outputs["--output_checkpoint"] = args.output_checkpoint
    check_outputs(outputs, args.overwrite, inputs={"--checkpoint": args.checkpoint})
    from fer_common.model.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
    from fer_common.model.networks import count_parameters, create_model, default_preprocessing
    from fer_common.model.onnx_export import export_onnx

    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint, expected_type="advanced")
        model = model_from_checkpoint(ckpt, args.checkpoint)
        print(f"loaded {args.checkpoint} (epoch {ckpt.get('epoch', '?')})")
    else:
        config = model_config_from_args(args, "advanced")
        model = create_model("advanced", **config).eval()
        # Class order as the training scripts will see it (folders sorted by name), so that
        # advanced_fine_tuning.py --resume can start from this file.
        ckpt = make_checkpoint(model, "advanced", config, sorted(EMOTIONS),
                               default_preprocessing("advanced", model), epoch=0, metrics={}, args=vars(args))
        save_checkpoint(ckpt, args.output_checkpoint)
        weights = "ImageNet" if args.pretrained or args.pretrained_weights else "random"
        print(f"advanced model: {config['backbone']} ({weights} weights), {count_parameters(model) / 1e6:.1f} M parameters; "
              f"embedding and classifier untrained -> {args.output_checkpoint}")
    export_onnx(model, args.output_onnx, "advanced", ckpt["class_names"], ckpt["preprocessing"])
    print(f"ONNX model -> {args.output_onnx}")

