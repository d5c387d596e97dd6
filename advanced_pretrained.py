"""Build the advanced FER model (timm Swin-Base backbone -> 128-d embedding -> 7 emotions), save and export it: `fer pretrained` as a script.

    python advanced_pretrained.py

The command line lives in fer_common.commands.pretrained (python advanced_pretrained.py --help lists every flag).
"""

from fer_common.cli import run_main
from fer_common.commands.pretrained import get_args_parser, main

if __name__ == "__main__":
    run_main(main, get_args_parser())
