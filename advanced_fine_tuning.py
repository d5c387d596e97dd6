"""Fine-tune the advanced FER model (a timm Swin-Base backbone, 3x224x224, 128-d embedding): `fer train-advanced` as a script.

    python advanced_fine_tuning.py --dataset_path dataset --epochs 30 --batch_size 32 --learning_rate 0.0001 --step_size 10 --gamma 0.5 --patience 3

The command line lives in fer_common.commands.train_advanced (python advanced_fine_tuning.py --help lists every flag).
"""

from fer_common.cli import run_main
from fer_common.commands.train_advanced import get_args_parser, main

if __name__ == "__main__":
    run_main(main, get_args_parser())
