"""Evaluate a trained model (.pth or .onnx) on a folder data set of face crops, e.g. FER-2013's test split: `fer evaluate` as a script.

    python evaluate.py --data dataset/test

The command line lives in fer_common.commands.evaluate (python evaluate.py --help lists every flag).
"""

from fer_common.cli import run_main
from fer_common.commands.evaluate import get_args_parser, main

if __name__ == "__main__":
    run_main(main, get_args_parser())
