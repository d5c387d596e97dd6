"""Download or import FER-2013 into dataset/train/<Class>/ and dataset/test/<Class>/.

    python download_dataset.py                                      # Kaggle (needs an API token)
    python download_dataset.py --source ~/Downloads/archive.zip     # the Kaggle zip, its folder, or fer2013.csv
    python download_dataset.py --source https://example.org/fer2013.csv.gz --sha256 <sum>
    python download_dataset.py --source fer2013.csv --ferplus fer2013new.csv    # with FER+'s crowd votes

A complete data set already at --output is reported, not fetched again (--force redoes it).
"""

import os
import sys

from fer_common.cli import existing_file, http_url, make_parser, path_arg, sha256_arg, url_or_path
from fer_common.datasets.download import KAGGLE_API, import_dataset
from fer_common.labels import count_table


def get_args_parser():
    parser = make_parser(__doc__)
    data = parser.add_argument_group("Data")
    data.add_argument("--source", default="kaggle", type=url_or_path,
                      help="'kaggle' (msambare/fer2013 through the Kaggle API), an http(s) URL of a .zip, .tar, "
                           ".tar.gz/.tgz, .csv or .csv.gz, or a local path: the Kaggle folder (train/, test/), "
                           "its zip or tar, or the original fer2013.csv (plain or gzipped)")
    data.add_argument("--sha256", default=None, type=sha256_arg,
                      help="expected SHA-256 of the downloaded or given file, checked before extracting")
    data.add_argument("--keep_splits", action="store_true",
                      help="from fer2013.csv, write PublicTest and PrivateTest to public_test/ and private_test/ "
                           "instead of both to test/")
    data.add_argument("--ferplus", metavar="VOTES", type=existing_file,
                      help="attach FER+ crowd votes: FERPlus's fer2013new.csv for a fer2013.csv source (row by row), "
                           "or a votes file keyed by image path; written as <output>/ferplus_votes.csv keyed by the "
                           "images imported, for fine_tuning.py --votes")
    data.add_argument("--kaggle_api", default=os.environ.get("KAGGLE_API_BASE", KAGGLE_API), type=http_url,
                      help="Kaggle API base URL (env KAGGLE_API_BASE); credentials come from KAGGLE_USERNAME and "
                           "KAGGLE_KEY, or kaggle.json in KAGGLE_CONFIG_DIR or ~/.kaggle")
    out = parser.add_argument_group("Output")
    out.add_argument("--output", default="dataset", type=path_arg, help="data set folder to create")
    out.add_argument("--force", action="store_true",
                     help="redo the import even if a complete data set is already there (it is replaced "
                          "only once the new one is complete)")
    return parser


def main(args):
    info = import_dataset(args.source, args.output, keep_splits=args.keep_splits, force=args.force,
                          sha256=args.sha256, kaggle_api=args.kaggle_api, ferplus=args.ferplus)
    counts = info["counts"]
    summary = ", ".join(f"{sum(c.values())} {split}" for split, c in counts.items())
    if info["already_present"]:
        print(f"dataset already present at {args.output}: {summary} images (from {info['source']}, "
              f"{info['created']}); use --force to redo")
    else:
        for reason, n in info["skipped"].items():
            kept = reason.endswith("and kept")      # renamed, not left out
            print(f"warning: {'' if kept else 'skipped '}{n} {reason}", file=sys.stderr)
        print(f"imported {summary} images into {args.output}")
    votes = info.get("ferplus")
    if votes:
        print(f"FER+ votes of {votes['file']} for {votes['images']} images -> {args.output}/ferplus_votes.csv "
              f"(train on them with fine_tuning.py --votes {args.output}/ferplus_votes.csv)"
              + (f"; {votes['without_votes']} images have none" if votes["without_votes"] else ""))
    print(count_table(counts))

