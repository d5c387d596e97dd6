"""Evaluate a trained model (.pth or .onnx) on a folder data set of face crops, e.g. FER-2013's test split.

    python evaluate.py --data dataset/test
    python evaluate.py --data dataset/test --votes ferplus-votes.csv      # against FER+ majority labels

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
from fer_common.cli import FERError, existing_file, int_range, make_parser, path_arg
from fer_common.datasets.ferplus import CLASS_NAMES as FERPLUS_CLASSES, keep_labelled, read_votes
from fer_common.datasets.folders import list_samples
from fer_common.files import check_outside, check_writable, printable, write_json
from fer_common.metrics import classification_report, confusion_matrix, draw_confusion_matrix, format_report
from fer_common.infer.predictor import add_predictor_args, predictor_from_args


def get_args_parser():
    parser = make_parser(__doc__)
    g = parser.add_argument_group("Data")
    g.add_argument("--data", default="dataset/test", type=path_arg, help="folder with one sub-folder of images per emotion")
    g.add_argument("--batch_size", type=int_range(1, 65536, name="batch_size"), default=256, help="images per forward pass")
    g.add_argument("--votes", metavar="FILE", type=existing_file,
                   help="score against the FER+ majority label of each image from this votes file (as fine_tuning.py "
                        "--votes reads it) instead of its folder; images without one are left out, and classes the "
                        "model does not predict (a 7-class model: Contempt) count as errors")
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
    votes = None
    if args.votes:
        table = read_votes(args.votes)
        kept, labelled = keep_labelled(table, samples, "majority", args.data)
        print(f"votes: {labelled.describe(len(samples), printable(args.data))}")
        samples = [(path, int(label)) for (path, _), label in zip(kept, labelled.labels)]
        folder_classes = FERPLUS_CLASSES
        votes = {"file": Path(args.votes).name, "labels": "FER+ majority (Barsoum et al. 2016)"}
    predictor = predictor_from_args(args)
    predictor.set_threads()
    # Labels are indices into the sorted class names; the model may order its classes otherwise.
    names = list(predictor.class_names)
    unknown = sorted({folder_classes[label] for _, label in samples} - set(names))
    if unknown and not votes:
        raise FERError(f"{args.data} has classes the model does not know: {', '.join(unknown)} "
                       f"(it predicts {', '.join(names)})")
    if unknown:
        missed = sum(folder_classes[label] in unknown for _, label in samples)
        print(f"note: the model does not predict {', '.join(unknown)}: its {missed} image(s) count as errors")
        names += unknown          # classes it never predicts: columns of zeros
    to_model = np.array([names.index(c) if c in names else -1 for c in folder_classes])   # -1: no image has it

    # The bulk reader: worker threads decode and classify chunks of --batch_size images, in order.
    paths = [str(p) for p, _ in samples]
    probabilities, labels, unreadable = [], [], []
    results = iter_results(predictor, paths, batch_size=args.batch_size)
    for r in tqdm(results, total=len(paths), desc="evaluating", unit="img", leave=False, mininterval=0.5):
        if r.error is not None:
            unreadable.append(r.source)
        else:
            probabilities.append(padded(probability_matrix(r, predictor.class_names)[0], len(names)))
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
    if votes:
        print(f"FER+ majority accuracy on {len(labels)} images ({len(names)} classes): {report['accuracy'] * 100:.2f}%")
    run = f"{printable(Path(predictor.path).name)} on {printable(args.data)}"
    # All three files or none: a failed write (a full disk) removes what this run had written.
    written = []
    try:
        title = f"{run}: {'FER+ majority ' if votes else ''}accuracy {report['accuracy'] * 100:.2f}%"
        draw_confusion_matrix(cm, names, targets[0], title=title)
        written.append(targets[0])
        draw_reliability_diagram(curves, labels, targets[2], title=run)
        written.append(targets[2])
        write_json(targets[1], {"model": str(predictor.path), "data": str(args.data), "tta": args.tta,
                                **({"votes": votes} if votes else {}), **report, "class_names": names,
                                "confusion_matrix": cm.tolist()})
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
        raw = [padded(probability_matrix(r, predictor.class_names)[0], probabilities.shape[1])
               for r in iter_results(predictor.with_temperature(1.0), paths, batch_size=args.batch_size)
               if r.error is None]
        result["ece_uncalibrated"] = expected_calibration_error(np.stack(raw), labels)
        curves = {"uncalibrated (T=1)": np.stack(raw), **curves}
    print(f"expected calibration error {ece * 100:.2f}%" + (f" (uncalibrated: {result['ece_uncalibrated'] * 100:.2f}%)"
                                                           if "ece_uncalibrated" in result else ""))
    return result, curves


def padded(p: np.ndarray, width: int) -> np.ndarray:
    """A model's probabilities with zeros for the classes it does not predict (appended to its names)."""
    return np.pad(p, (0, width - len(p)))
