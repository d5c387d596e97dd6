"""Fine-tune the advanced FER model (a timm Swin-Base backbone, 3x224x224, 128-d embedding).

    python advanced_fine_tuning.py --dataset_path dataset --epochs 30 --batch_size 32 --learning_rate 0.0001 --step_size 10 --gamma 0.5 --patience 3

Reads dataset/train_new and dataset/val_new, applies ImageNet-style preprocessing with face
augmentation, prints one report line per epoch, stops early (with confirmation epochs), saves the best
checkpoint to fer_model_advanced.pth and exports fer_model_advanced.onnx. Starts from timm's ImageNet
weights (downloaded once; offline, give --pretrained_weights PATH or --no_pretrained).
"""

from fer_common.cli import make_parser
from fer_common.model.config import add_model_args, model_config_from_args
from fer_common.train.args import add_training_args


def get_args_parser():
    parser = make_parser(__doc__)
    add_training_args(parser, epochs=30, batch_size=32, learning_rate=1e-4, step_size=10, gamma=0.5, patience=3,
                      output_model="fer_model_advanced.pth", output_onnx="fer_model_advanced.onnx")
    add_model_args(parser, "advanced")
    return parser


def main(args):
    from fer_common.train.loop import train

    train(args, "advanced", model_config_from_args(args, "advanced"))

