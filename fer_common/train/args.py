"""The training scripts' flags, in groups (Data, Optimisation, recipes, Device, Output), and the files they name."""

import argparse
from pathlib import Path

from fer_common import cli
from fer_common.datasets.ferplus import MODES as VOTE_MODES
from fer_common.device import default_num_workers
from fer_common.errors import FERError
from fer_common.files import check_outputs, same_file

# The warp and jitter ranges of each policy, and the share of images each degradation is applied to.
POLICIES = {
    "standard": {"max_rotation": 10.0, "scale": (0.9, 1.1), "max_shift": 0.08, "degrade": None},
    "broad": {"max_rotation": 15.0, "scale": (0.8, 1.2), "max_shift": 0.10,
              "degrade": {"blur": 0.2, "resample": 0.1, "noise": 0.1, "jpeg": 0.2, "erase": 0.2}},
}


VOTE_HEAD_WEIGHT = 0.5


def add_training_args(parser: argparse.ArgumentParser, **defaults) -> None:
    """The flags both training scripts share. `defaults` are a script's own defaults by flag name
    (epochs=35, batch_size=64, learning_rate=2e-3, ...); each must name one of these flags."""
    add_data_args(parser)
    add_optimisation_args(parser)
    add_recipe_args(parser)
    add_amp_args(parser)
    add_output_args(parser)
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise TypeError(f"add_training_args: no flag for the default(s) {', '.join(unknown)}")
    parser.set_defaults(**defaults)


def add_data_args(parser):
    g = parser.add_argument_group("Data")
    g.add_argument("--dataset_path", default="dataset", type=cli.path_arg, help="folder holding train_new/ and val_new/ (see validation_split.py)")
    g.add_argument("--num_workers", type=cli.num_workers_int, default=default_num_workers(), help="data loading processes")
    g.add_argument("--no_cache", action="store_true",
                   help="decode images from disk every epoch instead of caching them in memory as uint8")
    g.add_argument("--augmentation", choices=list(POLICIES), default="standard",
                   help="standard: mirror, +-10 degree rotation, +-10%% zoom and shift, brightness/contrast; broad: "
                        "wider warps plus blur, low resolution, noise, JPEG and random erasing on some faces "
                        "(teachers of --teacher see the faces undegraded)")
    g.add_argument("--votes", metavar="FILE", type=cli.existing_file,
                   help="train on FER+ crowd votes instead of the folders' labels: a votes file keyed by image path "
                        "(file,neutral,...,NF) or FERPlus's fer2013new.csv for a fer2013.csv import; 8 classes "
                        "(FER-2013's 7 and Contempt), images without votes or without a FER+ label left out")
    g.add_argument("--vote_mode", choices=VOTE_MODES, default="probability",
                   help="FER+'s training modes: probability = a label drawn from the vote distribution each time "
                        "an image is seen; crossentropy = the distribution itself as a soft target; majority = the "
                        "majority label (validation always scores against the majority label)")
    g.add_argument("--vote_head", metavar="FILE", type=cli.existing_file,
                   help="multi-task: the folders' labels stay the classifier's target, and a second, training-only "
                        "head on the embedding learns the FER+ vote distribution of each training image that has "
                        "votes (a votes file as for --votes); the head is not part of the saved model")
    g.add_argument("--vote_head_weight", type=cli.positive_float, default=VOTE_HEAD_WEIGHT,
                   help="weight of the vote head's soft cross-entropy, added to the classifier's loss")
    return g


def add_optimisation_args(parser):
    g = parser.add_argument_group("Optimisation")
    g.add_argument("--epochs", type=cli.positive_int, default=30, help="maximum number of epochs")
    g.add_argument("--batch_size", type=cli.positive_int, default=32, help="images per batch (per process under torchrun)")
    g.add_argument("--learning_rate", type=cli.positive_float, default=1e-4, help="initial learning rate (AdamW)")
    g.add_argument("--weight_decay", type=cli.non_negative_float, default=1e-4, help="AdamW weight decay")
    g.add_argument("--scheduler", choices=["step", "cosine"], default="step",
                   help="step: StepLR(step_size, gamma) as in the original; cosine: cosine decay over --epochs")
    g.add_argument("--step_size", type=cli.positive_int, default=10, help="StepLR: epochs between learning-rate drops")
    g.add_argument("--gamma", type=cli.float_range(0, 1, lo_open=True, name="gamma"), default=0.5, help="StepLR: learning-rate factor at each drop")
    g.add_argument("--patience", type=cli.positive_int, default=3, help="early stopping: epochs without a lower val loss")
    g.add_argument("--extra_epochs", type=cli.non_negative_int, default=2,
                   help="early stopping: confirmation epochs after patience runs out (an improvement resumes training)")
    g.add_argument("--label_smoothing", type=cli.unit_interval_open_top, default=0.1, help="cross-entropy label smoothing")
    g.add_argument("--class_weights", choices=["none", "sqrt", "balanced"], default="sqrt",
                   help="loss weights against class imbalance (Disgust is 1.5%% of FER-2013): "
                        "balanced = 1/frequency, sqrt = its square root")
    g.add_argument("--seed", type=cli.seed_int, default=42, help="random seed")
    return g


DISTILL_TEMPERATURE, DISTILL_WEIGHT = 4.0, 0.7


def add_recipe_args(parser):
    g = parser.add_argument_group("Weight averaging, mixup and distillation")
    g.add_argument("--ema_decay", type=cli.unit_interval_open_top, default=0.999,
                   help="exponential moving average of the weights, validated and saved as the best model (0 = off)")
    g.add_argument("--mixup", type=cli.non_negative_float, default=0.0, metavar="ALPHA",
                   help="mixup: blend image pairs with a Beta(ALPHA, ALPHA) weight (0 = off; 0.2 is typical)")
    g.add_argument("--teacher", action="append", default=[], type=cli.existing_file, metavar="CHECKPOINT",
                   help="distil from a trained model (repeat for an ensemble: their probabilities are averaged)")
    g.add_argument("--teacher_tta", action="store_true",
                   help="each teacher also sees the mirror image of every face (probabilities averaged): "
                        "better soft labels for twice the teachers' cost")
    g.add_argument("--distill_temperature", type=cli.positive_float, default=DISTILL_TEMPERATURE,
                   help="softmax temperature of the teachers and student")
    g.add_argument("--distill_weight", type=cli.probability, default=DISTILL_WEIGHT,
                   help="share of the loss from the teachers' soft labels (the rest from the true labels)")
    return g


def add_amp_args(parser):
    g = cli.add_device_args(parser)
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                   help="mixed precision: auto = bf16 (or fp16) on CUDA, off on the CPU; bf16 also speeds up "
                        "CPUs with AVX512-BF16/AMX")
    return g


def add_output_args(parser):
    g = parser.add_argument_group("Output")
    g.add_argument("--output_model", default="fer_model.pth", type=cli.path_arg, help="best checkpoint (lowest val loss)")
    g.add_argument("--output_onnx", default="fer_model.onnx", type=cli.output_file(".onnx"), help="ONNX export of the best model, written at the end")
    g.add_argument("--resume", metavar="CHECKPOINT", type=cli.existing_file, help="continue training from a checkpoint (its *.last.pth file)")
    g.add_argument("--init_from", metavar="CHECKPOINT", type=cli.existing_file,
                   help="start a new run from a trained model of the same type and size (e.g. models/fer_model.pth): "
                        "its feature and embedding weights are kept, the classifier head is replaced when the data's "
                        "classes differ; unlike --resume, epochs, optimizer and output files start afresh")
    g.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return g


def check_distillation_args(args) -> None:
    """The distillation flags only mean something with --teacher: refuse them alone rather than ignore them."""
    given = [flag for flag, on in (("--teacher_tta", args.teacher_tta),
                                   ("--distill_temperature", args.distill_temperature != DISTILL_TEMPERATURE),
                                   ("--distill_weight", args.distill_weight != DISTILL_WEIGHT)) if on]
    if given and not args.teacher:
        raise FERError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --teacher CHECKPOINT "
                       "(the model to distil from)")


def check_vote_args(args) -> None:
    """--vote_mode only means something with --votes, --vote_head_weight with --vote_head: refuse them alone
    rather than ignore them; and --vote_head learns beside the folders' labels, so not with --votes or mixup."""
    if args.vote_mode != "probability" and not args.votes:
        raise FERError(f"--vote_mode {args.vote_mode} needs --votes FILE (the FER+ votes to train on)")
    if args.vote_head_weight != VOTE_HEAD_WEIGHT and not args.vote_head:
        raise FERError("--vote_head_weight needs --vote_head FILE (the FER+ votes its head learns)")
    if args.vote_head and args.votes:
        raise FERError("--vote_head learns FER+ votes beside the folders' labels, --votes trains on the votes "
                       "instead of them: give one of them")
    if args.vote_head and args.mixup > 0:
        raise FERError("--vote_head does not combine with --mixup (a blended face has no crowd votes): drop one")


def last_checkpoint_path(output_model) -> Path:
    """X.last.pth beside X.pth: the latest training state, which --resume continues."""
    p = Path(output_model)
    return p.with_name(p.stem + ".last" + p.suffix)


def metrics_path(output_model) -> Path:
    """X_metrics.json beside X.pth: the run's history, one row per epoch."""
    p = Path(output_model)
    return p.with_name(p.stem + "_metrics.json")


def check_training_outputs(args) -> None:
    """Every file the run writes, checked before the first epoch: distinct, writable, and no existing file
    replaced without --overwrite. Resuming from the run's own X.last.pth continues its files (X.pth,
    X.last.pth, X_metrics.json and --output_onnx); resuming from any other file protects them as usual."""
    last = last_checkpoint_path(args.output_model)
    outputs = {"--output_model": args.output_model, "--output_model's last checkpoint": last,
               "--output_model's history": metrics_path(args.output_model), "--output_onnx": args.output_onnx}
    own = list(outputs.values()) if args.resume and same_file(args.resume, last) else []
    if args.resume and not own and same_file(args.resume, args.output_model) and not args.overwrite:
        raise FERError(f"--resume {args.resume} is also --output_model: training would replace this model with "
                       f"the run's first epoch; choose another --output_model, resume from {last}, or pass --overwrite")
    try:
        check_outputs(outputs, args.overwrite, replaceable=own)
    except FERError as e:
        if "already exists" not in str(e):
            raise
        raise FERError(f"{e}, --resume {last} to continue that run, or choose --output_model/--output_onnx") from None
