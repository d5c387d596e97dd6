"""Which test-time views help the shipped model: accuracy of view sets on face-crop folders (issue 31).

    python -m benchmarks.tta_study --data dataset/val_new --data dataset/test

Each face crop is classified as it is, mirrored, zoomed in (a centred crop of 0.9 or 0.95 of its side, resized
back, and mirrored), and shifted 2 px each way (edges reflected); a view set's prediction is the mean of its views'
probabilities. The toolkit's TTA is the first two views (the crop and its mirror); `--tta_views 4` and `10` are
two of the sets here (fer_common/infer/tta.py holds the views). Choose on the
validation split, report on PublicTest; each extra view costs one more forward pass per face. Figures go to
models/README.md by hand.
"""

import numpy as np

from fer_common.cli import make_parser, path_arg, run_main
from fer_common.datasets.folders import list_samples
from fer_common.errors import FERError
from fer_common.infer.predictor import Predictor
from fer_common.infer.tta import VIEW_SETS, VIEWS
from fer_common.preprocess import read_image, resize

from .common import REPO


SETS = {
    "crop (no TTA)": ["crop"],
    "crop + mirror (the toolkit's TTA)": ["crop", "mirror"],
    "+ zoom 0.9 and its mirror (4 views)": ["crop", "mirror", "zoom 0.9", "zoom 0.9, mirrored"],
    "+ zoom 0.95 and its mirror (4 views)": ["crop", "mirror", "zoom 0.95", "zoom 0.95, mirrored"],
    "+ both zooms and mirrors (6 views)": ["crop", "mirror", "zoom 0.9", "zoom 0.9, mirrored", "zoom 0.95",
                                           "zoom 0.95, mirrored"],
    "+ 4 shifts (6 views)": ["crop", "mirror"] + [v for v in VIEWS if v.startswith("shift")],
    "all 10 views": list(VIEWS),
}


def view_probabilities(predictor, images: list, batch: int = 512) -> dict:
    """view name -> N x classes probabilities of the predictor (its own TTA off) on each image's view (the
    views of --tta_views, fer_common.infer.tta, made on the uint8 crops at the model's input size)."""
    stack = np.stack([resize(im, predictor.preprocessing["input_size"]) for im in images])[:, None]
    out = {}
    for name, make in VIEWS.items():
        views = list(make(stack)[:, 0])
        out[name] = np.concatenate([predictor.predict(views[i:i + batch]).probabilities
                                    for i in range(0, len(views), batch)])
    return out


def read_folder(folder: str, class_names: list) -> tuple[list, np.ndarray]:
    """The folder's face crops (gray, as the model reads them) and their labels; one line for an unreadable one."""
    samples, _ = list_samples(folder, class_names)
    images = [read_image(path, 1) for path, _ in samples]
    bad = [str(path) for (path, _), image in zip(samples, images) if image is None]
    if bad:
        raise FERError(f"{len(bad)} unreadable image(s) in {folder}, e.g. {bad[0]}")
    return images, np.array([label for _, label in samples])


def get_args_parser():
    parser = make_parser(__doc__)
    parser.add_argument("--data", action="append", type=path_arg,
                        help="class folders of face crops (repeat: one table column each; default: "
                             "dataset/val_new and dataset/test)")
    parser.add_argument("--model", default=str(REPO / "models" / "fer_model.int8.onnx"), type=path_arg,
                        help="the model to study")
    return parser


def main(args) -> None:
    folders = args.data or [str(REPO / "dataset" / "val_new"), str(REPO / "dataset" / "test")]
    predictor = Predictor(args.model, tta=False)
    columns, counts = [], []
    for folder in folders:
        images, labels = read_folder(folder, predictor.class_names)
        probs = view_probabilities(predictor, images)
        columns.append({name: float((sum(probs[v] for v in views).argmax(1) == labels).mean() * 100)
                        for name, views in SETS.items()})
        counts.append(len(images))
    print(f"model {args.model}")
    print("| view set | " + " | ".join(f"{f} ({n})" for f, n in zip(folders, counts)) + " |")
    print("|---|" + "---|" * len(folders))
    for name in SETS:
        print(f"| {name} | " + " | ".join(f"{c[name]:.2f}%" for c in columns) + " |")


if __name__ == "__main__":
    run_main(main, get_args_parser())
