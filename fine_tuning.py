"""Train the default FER model (a CNN on 48x48 grayscale faces) on a folder data set: `fer train` as a script.

    python fine_tuning.py --dataset_path dataset --epochs 35 --batch_size 64 --learning_rate 0.002

The command line lives in fer_common.commands.train (python fine_tuning.py --help lists every flag).
"""

from fer_common.cli import run_main
from fer_common.commands.train import get_args_parser, main

if __name__ == "__main__":
    run_main(main, get_args_parser())
