"""Evaluate a trained model (.pth or .onnx) on a folder data set of face crops, e.g. FER-2013's test split.

    python evaluate.py --data dataset/test

Prints overall accuracy, macro F1 and per-class precision / recall / F1, and writes the confusion matrix
as a picture (confusion_matrix.png) and everything as JSON (metrics.json) into --output_dir.
Images are classified whole (no face detection): the data set's images are already face crops.
"""

from pathlib import Path

import numpy as np
from tqdm import tqdm

from fer_common.cli import FERError, make_parser, run_main
from fer_common.data import list_samples
from fer_common.files import write_json
from fer_common.metrics import classification_report, confusion_matrix, draw_confusion_matrix, format_report
from fer_common.predictor import add_predictor_args, predictor_from_args
from fer_common.preprocess import read_image


def get_args_parser():
    parser = make_parser(__doc__)
    g = parser.add_argument_group("Data")
    g.add_argument("--data", default="dataset/test", help="folder with one sub-folder of images per emotion")
    g.add_argument("--batch_size", type=int, default=256, help="images per forward pass")
    add_predictor_args(parser, tta=True)
    g = parser.add_argument_group("Output")
    g.add_argument("--output_dir", default="evaluation", help="where confusion_matrix.png and metrics.json go")
    g.add_argument("--overwrite", action="store_true", help="replace results already in --output_dir")
    return parser


def main(args):
    out = Path(args.output_dir)
    targets = [out / "confusion_matrix.png", out / "metrics.json"]
    if not args.overwrite and any(p.exists() for p in targets):
        raise FERError(f"{out} already holds results: pass --overwrite or choose another --output_dir")
    samples, folder_classes = list_samples(args.data)
    predictor = predictor_from_args(args)
    # Folder labels are indices into the sorted folder names; the model may order its classes otherwise.
    names = predictor.class_names
    to_model = np.array([names.index(c) for c in folder_classes])
    channels = predictor.preprocessing["channels"]

    predictions, labels, unreadable = [], [], []
    for start in tqdm(range(0, len(samples), args.batch_size), desc="evaluating", unit="batch", leave=False):
        batch = samples[start:start + args.batch_size]
        images = [(read_image(p, channels), label) for p, label in batch]
        unreadable += [p for (p, _), (im, _) in zip(batch, images) if im is None]
        images = [(im, label) for im, label in images if im is not None]
        if images:
            probs = predictor.predict([im for im, _ in images], bgr=False).probabilities
            predictions.append(probs.argmax(1))
            labels.append(to_model[[label for _, label in images]])
    if unreadable:
        print(f"warning: skipped {len(unreadable)} unreadable image(s), e.g. {unreadable[0]}")
    if not predictions:
        raise FERError(f"no readable images in {args.data}")

    cm = confusion_matrix(np.concatenate(labels), np.concatenate(predictions), len(names))
    report = classification_report(cm, names)
    print(format_report(report))
    title = f"{Path(predictor.path).name} on {args.data}: accuracy {report['accuracy'] * 100:.2f}%"
    draw_confusion_matrix(cm, names, targets[0], title=title)
    write_json(targets[1], {"model": str(predictor.path), "data": str(args.data), "tta": args.tta,
                            **report, "class_names": names, "confusion_matrix": cm.tolist()})
    print(f"confusion matrix -> {targets[0]}; metrics -> {targets[1]}")


if __name__ == "__main__":
    run_main(main, get_args_parser())
