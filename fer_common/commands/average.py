"""Average the weights of models fine-tuned from one starting model (a model soup), then calibrate and export.

    fer average gen2.pth gen2_finetuned.pth --weights 0.7 0.3 --output soup.pth     # or python -m fer_common average
    fer calibrate soup.pth --data dataset/val_new --output soup.pth --overwrite
    fer export soup.pth soup.onnx

The checkpoints must share architecture, classes (in one order) and preprocessing. Beside --output goes
X_metrics.json with each ingredient's weight and training history.
"""

from fer_common import cli
from fer_common.files import check_outputs, write_json
from fer_common.train.args import metrics_path


def get_args_parser():
    parser = cli.make_parser(__doc__)
    parser.add_argument("checkpoints", nargs="+", type=cli.existing_file, metavar="CHECKPOINT",
                        help="two or more .pth checkpoints of this toolkit, fine-tuned from one model")
    parser.add_argument("--weights", nargs="+", type=cli.positive_float, metavar="W",
                        help="one weight per checkpoint, normalised to sum to 1 (default: equal)")
    parser.add_argument("--output", required=True, type=cli.output_file(".pth"), help="the averaged checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace --output and its X_metrics.json")
    return parser


def main(args):
    inputs = {f"checkpoint {i + 1}": path for i, path in enumerate(args.checkpoints)}
    history_path = metrics_path(args.output)
    check_outputs({"--output": args.output, "--output's history": history_path}, args.overwrite, inputs=inputs)
    from fer_common.model.averaging import average_checkpoints
    from fer_common.model.checkpoint import save_checkpoint

    ckpt, history = average_checkpoints(args.checkpoints, args.weights)
    save_checkpoint(ckpt, args.output)
    write_json(history_path, history)
    parts = ", ".join(f"{i['file']} x {i['weight']:.3f}" for i in ckpt["averaged_from"])
    print(f"averaged {parts} -> {args.output} (history -> {history_path}); "
          f"calibrate it next on your validation split: fer calibrate {args.output} --data dataset/val_new "
          f"--output {args.output} --overwrite")
