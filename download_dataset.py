"""Download or import FER-2013 into dataset/train/<Class>/ and dataset/test/<Class>/: `fer download` as a script.

    python download_dataset.py                                      # Kaggle (needs an API token)
    python download_dataset.py --source ~/Downloads/archive.zip     # the Kaggle zip, its folder, or fer2013.csv
    python download_dataset.py --source https://example.org/fer2013.csv.gz --sha256 <sum>

The command line lives in fer_common.commands.download (python download_dataset.py --help lists every flag).
"""

from fer_common.cli import run_main
from fer_common.commands.download import get_args_parser, main

if __name__ == "__main__":
    run_main(main, get_args_parser())
