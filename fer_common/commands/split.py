"""Split dataset/train into dataset/train_new and dataset/val_new, stratified per class.

    python validation_split.py --dataset_path dataset --val_ratio 0.1 --seed 42

The same seed and files always give the same split; dataset/train is never changed.
"""

from fer_common.cli import fraction, make_parser, path_arg, seed_int
from fer_common.labels import count_table
from fer_common.datasets.splitting import MODES, split_dataset


def get_args_parser():
    parser = make_parser(__doc__)
    data = parser.add_argument_group("Data")
    data.add_argument("--dataset_path", default="dataset", type=path_arg,
                      help="data set folder holding train/<class>/ (as download_dataset.py makes it)")
    data.add_argument("--val_ratio", type=fraction, default=0.1,
                      help="share of each class that goes to val_new (at least 1 image per class)")
    data.add_argument("--seed", type=seed_int, default=42, help="seed of the shuffle; the same seed gives the same split")
    out = parser.add_argument_group("Output")
    out.add_argument("--mode", choices=MODES, default="copy",
                     help="how images get into train_new/val_new: copies, hard links (no extra disk space) "
                          "or relative symbolic links")
    out.add_argument("--force", action="store_true", help="replace existing train_new/ and val_new/")
    return parser


def main(args):
    result = split_dataset(args.dataset_path, args.val_ratio, args.seed, args.mode, args.force)
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} non-image entries")
    counts = result["counts"]
    print(f"split {args.dataset_path}/train into {sum(counts['train_new'].values())} train_new and "
          f"{sum(counts['val_new'].values())} val_new images (seed {args.seed}, val_ratio {args.val_ratio})")
    print(count_table(counts))

