"""The model flags and the config dict they make (no PyTorch: every command's --help works on the light install)."""

import argparse

from fer_common import cli

DEFAULT_BACKBONE = "swin_base_patch4_window7_224"


def add_model_args(parser, model_type: str):
    """Model flags: the embedding size for both models; backbone and ImageNet weights for the advanced one."""
    g = parser.add_argument_group("Model")
    g.add_argument("--embedding_dim", type=cli.int_range(1, 8192, name="embedding_dim"), default=128, help="size of the face embedding")
    g.add_argument("--dropout", type=cli.unit_interval_open_top, default=0.3, help="dropout before the embedding and classifier layers")
    if model_type == "default":
        g.add_argument("--widths", type=_widths, default=(40, 80, 160, 320), metavar="W1,W2,W3,W4",
                       help="channels of the four stages (compute grows with their square)")
    if model_type == "advanced":
        g.add_argument("--backbone", default=DEFAULT_BACKBONE,
                       help="timm model name (e.g. swin_tiny_patch4_window7_224, convnext_tiny, efficientnet_b0)")
        g.add_argument("--pretrained", dest="pretrained", action="store_true", default=True,
                       help="start from timm's ImageNet weights (downloaded once when online)")
        g.add_argument("--no_pretrained", dest="pretrained", action="store_false", help="start from random weights")
        g.add_argument("--pretrained_weights", metavar="PATH", type=cli.existing_file,
                       help="local timm/torchvision state dict of the backbone (for offline machines)")
    return g


def _widths(text: str) -> tuple:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 4 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive channel counts like 40,80,160,320, got '{text}'")
    return widths


def model_config_from_args(args, model_type: str) -> dict:
    config = {"embedding_dim": args.embedding_dim, "dropout": args.dropout}
    if model_type == "default":
        config["widths"] = list(args.widths)
    if model_type == "advanced":
        config.update(backbone=args.backbone, pretrained=args.pretrained, pretrained_weights=args.pretrained_weights)
    return config
