"""Split dataset/train into dataset/train_new and dataset/val_new, stratified per class: `fer split` as a script.

    python validation_split.py --dataset_path dataset --val_ratio 0.1 --seed 42

The command line lives in fer_common.commands.split (python validation_split.py --help lists every flag).
"""

from fer_common.cli import run_main
from fer_common.commands.split import get_args_parser, main

if __name__ == "__main__":
    run_main(main, get_args_parser())
