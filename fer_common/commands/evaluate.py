"""Evaluate a trained model (.pth or .onnx) on a folder data set of face crops, e.g. FER-2013's test split.

    python evaluate.py --data dataset/test

Prints overall accuracy, macro F1, per-class precision / recall / F1 and the expected calibration error,
and writes the confusion matrix (confusion_matrix.png), the reliability diagram (reliability.png) and
everything as JSON (metrics.json) into --output_dir.
Images are classified whole (no face detection): the data set's images are already face crops.
"""

from pathlib import Path

import numpy as np
from tqdm import tqdm

from fer_common.infer.bulk import iter_results
from fer_common.results import probability_matrix
from fer_common.model.calibration import draw_reliability_diagram, expected_calibration_error
from fer_common.cli import FERError, int_range, make_parser, path_arg
from fer_common.datasets.folders import list_samples
from fer_common.files import check_outside, check_writable, printable, write_json
from fer_common.metrics import classification_report, confusion_matrix, draw_confusion_matrix, format_report
from fer_common.infer.predictor import add_predictor_args, predictor_from_args


def get_args_parser():
    parser = make_parser(__doc__)
    g = parser.add_argument_group("Data")
    g.add_argument("--data", default="dataset/test", type=path_arg, help="folder with one sub-folder of images per emotion")
    g.add_argument("--batch_size", type=int_range(1, 65536, name="batch_size"), default=256, help="images per forward pass")
    add_predictor_args(parser, tta=True)
    g = parser.add_argument_group("Output")
    g.add_argument("--output_dir", default="evaluation", type=path_arg, help="where confusion_matrix.png and metrics.json go")
    g.add_argument("--overwrite", action="store_true", help="replace results already in --output_dir")
    return parser


def main(args):
    out = Path(args.output_dir)
    targets = [out / "confusion_matrix.png", out / "metrics.json", out / "reliability.png"]
    # Pictures in a class folder would be counted as images of that class by the next evaluation.
    check_outside({"--output_dir": out}, {"--data": args.data})
    if not args.overwrite and any(p.exists() for p in targets):
        raise FERError(f"{out} already holds results: pass --overwrite or choose another --output_dir")
    for target in targets:      # an unwritable folder found now, not after the whole evaluation
        check_writable(target, "--output_dir file", overwrite=True)
    samples, folder_classes = list_samples(args.data)
    predictor = predictor_from_args(args)
    predictor.set_threads()
    # Folder labels are indices into the sorted folder names; the model may order its classes otherwise.
    names = predictor.class_names
    unknown = [c for c in folder_classes if c not in names]
    if unknown:
        raise FERError(f"{args.data} has classes the model does not know: {', '.join(unknown)} "
                       f"(it predicts {', '.join(names)})")
    to_model = np.array([names.index(c) for c in folder_classes])

    # The bulk reader: worker threads decode and classify chunks of --batch_size images, in order.
    paths = [str(p) for p, _ in samples]
    probabilities, labels, unreadable = [], [], []
    results = iter_results(predictor, paths, batch_size=args.batch_size)
    for r in tqdm(results, total=len(paths), desc="evaluating", unit="img", leave=False, mininterval=0.5):
        if r.error is not None:
            unreadable.append(r.source)
        else:
            probabilities.append(probability_matrix(r, predictor.class_names)[0])
            labels.append(to_model[samples[r.index][1]])
    if unreadable:
        print(f"warning: skipped {len(unreadable)} unreadable image(s), e.g. {printable(unreadable[0])}")
    if not probabilities:
        raise FERError(f"no readable images in {args.data}")

    probabilities, labels = np.stack(probabilities), np.array(labels)
    cm = confusion_matrix(labels, probabilities.argmax(1), len(names))
    report = classification_report(cm, names)
    report["calibration"], curves = calibration_report(predictor, probabilities, labels, paths, args)
    print(format_report(report))
    run = f"{printable(Path(predictor.path).name)} on {printable(args.data)}"
    # All three files or none: a failed write (a full disk) removes what this run had written.
    written = []
    try:
        draw_confusion_matrix(cm, names, targets[0], title=f"{run}: accuracy {report['accuracy'] * 100:.2f}%")
        written.append(targets[0])
        draw_reliability_diagram(curves, labels, targets[2], title=run)
        written.append(targets[2])
        write_json(targets[1], {"model": str(predictor.path), "data": str(args.data), "tta": args.tta,
                                **report, "class_names": names, "confusion_matrix": cm.tolist()})
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    print(f"confusion matrix -> {targets[0]}; reliability diagram -> {targets[2]}; metrics -> {targets[1]}")


def calibration_report(predictor, probabilities, labels, paths, args) -> tuple[dict, dict]:
    """ECE of the probabilities users see and, for a calibrated model, of the raw ones (a second, uncalibrated
    pass); and the curves of the reliability diagram."""
    ece = expected_calibration_error(probabilities, labels)
    temperature = predictor.temperature
    curves = {f"as used (T={temperature:.2f})": probabilities}
    result = {"temperature": temperature, "ece": ece}
    if temperature != 1.0:
        # Unreadable images fail in both passes alike, so the rows line up with `labels`.
        raw = [probability_matrix(r, predictor.class_names)[0]
               for r in iter_results(predictor.with_temperature(1.0), paths, batch_size=args.batch_size)
               if r.error is None]
        result["ece_uncalibrated"] = expected_calibration_error(np.stack(raw), labels)
        curves = {"uncalibrated (T=1)": np.stack(raw), **curves}
    print(f"expected calibration error {ece * 100:.2f}%" + (f" (uncalibrated: {result['ece_uncalibrated'] * 100:.2f}%)"
                                                           if "ece_uncalibrated" in result else ""))
    return result, curves

