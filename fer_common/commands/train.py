"""Train the default FER model (a CNN on 48x48 grayscale faces) on a folder data set.

    python fine_tuning.py --dataset_path dataset --epochs 35 --batch_size 64 --learning_rate 0.002

Reads dataset/train_new and dataset/val_new (made by validation_split.py), prints one report line per
epoch, keeps the best checkpoint (lowest validation loss) in fer_model.pth, the latest training state in
fer_model.last.pth (for --resume), the history in fer_model_metrics.json, and exports fer_model.onnx.
"""

from fer_common.cli import make_parser
from fer_common.model.config import add_model_args, model_config_from_args
from fer_common.train.args import add_training_args


def get_args_parser():
    parser = make_parser(__doc__)
    # Defaults are the recipe of the shipped model (models/README.md); StepLR stays one flag away.
    add_training_args(parser, epochs=35, batch_size=64, learning_rate=2e-3, step_size=10, gamma=0.5, patience=8,
                      weight_decay=0.05, scheduler="cosine", output_model="fer_model.pth", output_onnx="fer_model.onnx")
    add_model_args(parser, "default")
    return parser


def main(args):
    from fer_common.train.loop import train

    train(args, "default", model_config_from_args(args, "default"))

