"""Classify the emotions of the faces in one or more images (files or folders): `fer analyse` as a script.

    python inference.py Test_files/IMG_test_1.jpg --model_type advanced
    python inference.py Test_files/IMG_test_1.jpg --use_onnx --model_type advanced

The command line lives in fer_common.commands.analyse (python inference.py --help lists every flag).
"""

from fer_common.cli import run_main
from fer_common.commands.analyse import get_args_parser, main

if __name__ == "__main__":
    run_main(main, get_args_parser())
