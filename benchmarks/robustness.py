"""Robustness table: each model's accuracy on a face-crop data set, clean and under fixed perturbations.

    python -m benchmarks.robustness --data dataset/test --model models/fer_model.int8.onnx \\
        --model gen1=/tmp/gen1.int8.onnx --output robustness.md robustness.json

Every image is read as evaluate.py reads it (the model's input channels, no detection), perturbed, and
classified by the toolkit's Predictor (the model's own preprocessing, mirror TTA unless --no_tta), so the
clean column is evaluate.py's accuracy. The perturbations (Gaussian blur, JPEG quality 30, brightness and
contrast +-30%, zoom 0.8 / 1.2 re-cropped to the original size, rotation +-15 degrees, a 10% horizontal shift)
are fixed transforms with no random draws: a run repeats to the last face. Geometric ones fill uncovered
borders by replicating the edge, as training's augmentation does. The first --model is the reference (the
shipped model); each other model gets the ship rule of issue 22: better clean accuracy and a mean over the
perturbations no worse than the reference's.
"""

import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):          # run as `python benchmarks/robustness.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from fer_common.cli import FERError, add_device_args, int_range, make_parser, output_file, path_arg, run_main  # noqa: E402
from fer_common.datasets.ferplus import CLASS_NAMES as FERPLUS_CLASSES, keep_labelled, read_votes  # noqa: E402
from fer_common.datasets.folders import list_samples  # noqa: E402
from fer_common.files import atomic_path, check_writable, write_json  # noqa: E402
from fer_common.labels import class_name  # noqa: E402
from fer_common.infer.predictor import Predictor  # noqa: E402
from fer_common.preprocess import read_image  # noqa: E402
from fer_common.runtime import PROVIDERS  # noqa: E402
from fer_common.shipped import SHIPPED_MODELS_DIR  # noqa: E402

from benchmarks.common import table  # noqa: E402

# Sizes below are given for FER-2013's 48x48 crops and scale with the image (a 96 px crop is blurred twice as wide).
REFERENCE_SIDE = 48


# ---- perturbations: uint8 HxW gray or HxWx3 RGB (as read_image gives them) in, same shape and dtype out ----

def gaussian_blur(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian blur, sigma in pixels of a 48 px crop (1.0: a slightly out-of-focus or upscaled face)."""
    s = sigma * max(image.shape[:2]) / REFERENCE_SIDE
    return cv2.GaussianBlur(image, (0, 0), s, borderType=cv2.BORDER_REFLECT_101)


def jpeg(image: np.ndarray, quality: int = 30) -> np.ndarray:
    """Encode as JPEG at `quality` and decode again (blocking and ringing of a heavily compressed photo)."""
    colour = image.ndim == 3
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if colour else image    # JPEG's colour transform expects BGR
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise FERError("OpenCV could not encode a JPEG")
    out = cv2.imdecode(data, cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB) if colour else out


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Every pixel times `factor` (1.3: 30% brighter, saturating at white; 0.7: 30% darker)."""
    return np.clip(np.rint(image.astype(np.float32) * factor), 0, 255).astype(np.uint8)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Distances from the image's mean grey level times `factor` (1.3: 30% more contrast; 0.7: 30% less)."""
    x = image.astype(np.float32)
    mean = x.mean()
    return np.clip(np.rint((x - mean) * factor + mean), 0, 255).astype(np.uint8)


def affine(image: np.ndarray, angle: float = 0.0, scale: float = 1.0, shift_x: float = 0.0) -> np.ndarray:
    """Rotate by `angle` degrees (counter-clockwise) and zoom by `scale` about the centre, then shift right by
    `shift_x` of the width; the output keeps the input's size (a zoom-in is re-cropped, a zoom-out or a shift
    fills the uncovered border by replicating the edge, as training's augmentation does)."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    m[0, 2] += shift_x * w
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# Column name -> perturbation, in table order (issue 22's list).
PERTURBATIONS = {
    "blur": lambda im: gaussian_blur(im, 1.0),
    "jpeg30": lambda im: jpeg(im, 30),
    "bright+30": lambda im: brightness(im, 1.3),
    "bright-30": lambda im: brightness(im, 0.7),
    "contrast+30": lambda im: contrast(im, 1.3),
    "contrast-30": lambda im: contrast(im, 0.7),
    "scale0.8": lambda im: affine(im, scale=0.8),
    "scale1.2": lambda im: affine(im, scale=1.2),
    "rot+15": lambda im: affine(im, angle=15),
    "rot-15": lambda im: affine(im, angle=-15),
    "shift10": lambda im: affine(im, shift_x=0.10),
}
CONDITIONS = ["clean", *PERTURBATIONS]


def perturb(images: list, name: str) -> list:
    """The images under one condition ('clean' or a PERTURBATIONS name)."""
    if name == "clean":
        return list(images)
    fn = PERTURBATIONS[name]
    return [fn(im) for im in images]


# ---- evaluation ----

def parse_model(text: str) -> tuple[str, str]:
    """'PATH' or 'NAME=PATH' -> (name for the table, path)."""
    if "=" in text and not os.path.exists(text):
        name, path = text.split("=", 1)
        if name and path:
            return name, path
    return Path(text).name, text


def labels_for(predictor, folder_classes: list[str], data, allow_unknown: bool = False) -> np.ndarray:
    """Folder label index -> the model's output index (class names compared in their canonical spelling);
    with allow_unknown, -1 for a class the model lacks (its faces count as errors: FER+'s Contempt for a
    7-class model)."""
    names = [class_name(c) for c in predictor.class_names]
    unknown = [c for c in folder_classes if c not in names]
    if unknown and allow_unknown:
        return np.array([names.index(c) if c in names else -1 for c in folder_classes])
    if unknown:
        raise FERError(f"{data} has classes {predictor.path} does not know: {', '.join(unknown)} "
                       f"(it predicts {', '.join(predictor.class_names)})")
    return np.array([names.index(c) for c in folder_classes])


def predict_labels(predictor, crops: list, batch_size: int) -> np.ndarray:
    """Top-1 model index for each crop (decoded RGB or gray, as evaluate.py's reader gives them)."""
    out = [predictor.predict(crops[i:i + batch_size], bgr=False).probabilities.argmax(1)
           for i in range(0, len(crops), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def robustness(predictors: dict, data, conditions=CONDITIONS, batch_size: int = 256, log=print, votes=None) -> dict:
    """Accuracy of each predictor (name -> Predictor) under each condition on the folder data set `data`.

    Returns {"images", "unreadable", "results": {name: {"accuracy": {condition: acc, ..., "mean": mean over
    the perturbations}, "recall": {condition: {class: recall}}, "correct": {condition: bool per image}}}}.
    """
    samples, folder_classes = list_samples(data)
    if votes:                   # FER+ majority labels instead of the folders' (evaluate.py --votes's rule)
        kept, labelled = keep_labelled(read_votes(votes), samples, "majority", data)
        log(f"votes: {labelled.describe(len(samples), str(data))}")
        samples = [(path, int(label)) for (path, _), label in zip(kept, labelled.labels)]
        folder_classes = list(FERPLUS_CLASSES)
    paths = [str(p) for p, _ in samples]
    folder_labels = np.array([label for _, label in samples])
    targets = {name: labels_for(p, folder_classes, data, allow_unknown=bool(votes))[folder_labels]
               for name, p in predictors.items()}

    # Decode once per number of input channels; the same unreadable files drop out for every model.
    channels = sorted({p.preprocessing["channels"] for p in predictors.values()})
    decoded = {c: [read_image(path, c) for path in paths] for c in channels}
    readable = np.array([all(decoded[c][i] is not None for c in channels) for i in range(len(paths))], bool)
    if not readable.any():
        raise FERError(f"no readable images in {data}")
    unreadable = [p for p, ok in zip(paths, readable) if not ok]
    if unreadable:
        log(f"warning: skipped {len(unreadable)} unreadable image(s), e.g. {unreadable[0]}")
    images = {c: [im for im, ok in zip(decoded[c], readable) if ok] for c in channels}
    del decoded

    results = {name: {"accuracy": {}, "recall": {}, "correct": {}} for name in predictors}
    for condition in conditions:
        t0 = time.perf_counter()
        crops = {c: perturb(images[c], condition) for c in channels}
        for name, predictor in predictors.items():
            y = targets[name][readable]
            pred = predict_labels(predictor, crops[predictor.preprocessing["channels"]], batch_size)
            correct = pred == y
            results[name]["correct"][condition] = correct
            results[name]["accuracy"][condition] = float(correct.mean())
            results[name]["recall"][condition] = {c: float(correct[y == k].mean())
                                                  for k, c in enumerate(predictor.class_names) if (y == k).any()}
        log(f"{condition:<12} " + "  ".join(f"{n} {r['accuracy'][condition] * 100:.2f}%" for n, r in results.items())
            + f"  ({time.perf_counter() - t0:.0f} s)")
    perturbed = [c for c in conditions if c != "clean"]
    for r in results.values():
        r["accuracy"]["mean"] = float(np.mean([r["accuracy"][c] for c in perturbed])) if perturbed else float("nan")
    return {"images": int(readable.sum()), "unreadable": len(unreadable), "results": results}


def format_table(report: dict, conditions=CONDITIONS) -> str:
    """Markdown table: one row per model, accuracy (%) clean, under each perturbation, and their mean."""
    headers = ["model", *conditions, "mean"]
    rows = [[name, *(f"{r['accuracy'][c] * 100:.2f}" for c in [*conditions, "mean"])]
            for name, r in report["results"].items()]
    return table(headers, rows)


def ship_verdicts(report: dict) -> list[str]:
    """Issue 22's ship rule for every model against the first (the reference): better clean, mean not worse."""
    names = list(report["results"])
    if len(names) < 2:
        return []
    ref = report["results"][names[0]]
    perturbed = [c for c in ref["correct"] if c != "clean"]
    lines = []
    for name in names[1:]:
        r = report["results"][name]
        # Both models see the same faces: the standard error of the paired per-face difference, not of each figure.
        clean = r["correct"]["clean"].astype(float) - ref["correct"]["clean"]
        mean = np.mean([r["correct"][c].astype(float) - ref["correct"][c] for c in perturbed], axis=0)
        d_clean, d_mean = clean.mean() * 100, mean.mean() * 100
        se = lambda d: d.std() * 100 / np.sqrt(len(d))      # noqa: E731
        ok = d_clean > 0 and d_mean >= 0
        lines.append(f"{name} vs {names[0]}: clean {d_clean:+.2f} points (paired s.e. {se(clean):.2f}), mean under "
                     f"perturbations {d_mean:+.2f} (s.e. {se(mean):.2f}): {'passes' if ok else 'fails'} the ship rule "
                     f"(better clean, mean not worse)")
    return lines


def get_args_parser():
    parser = make_parser(__doc__)
    g = parser.add_argument_group("Data")
    g.add_argument("--data", default="dataset/test", type=path_arg,
                   help="face-crop data set, one sub-folder of images per class (evaluate only on PublicTest)")
    g.add_argument("--votes", metavar="FILE", type=path_arg,
                   help="score against FER+ majority labels from this votes file (as evaluate.py --votes)")
    g.add_argument("--batch_size", type=int_range(1, 65536, name="batch_size"), default=256,
                   help="images per forward pass")
    g = parser.add_argument_group("Model")
    g.add_argument("--model", metavar="[NAME=]PATH", action="append", type=path_arg,
                   help="model file (.pth or .onnx), repeatable; the first is the reference for the ship rule "
                        "(default: the shipped models/fer_model.int8.onnx)")
    g.add_argument("--tta", dest="tta", action="store_true", default=True,
                   help="mirror test-time augmentation, as inference.py and evaluate.py by default")
    g.add_argument("--no_tta", dest="tta", action="store_false", help="classify each face once")
    g.add_argument("--provider", default="auto", choices=PROVIDERS,
                   help="ONNX Runtime provider (auto: CUDA when a GPU is usable, else the CPU)")
    add_device_args(parser)
    g = parser.add_argument_group("Output")
    g.add_argument("--output", nargs="+", metavar="FILE", type=output_file(".md", ".json"),
                   help="also write the table (.md) and/or every figure with per-class recall (.json)")
    g.add_argument("--overwrite", action="store_true", help="replace existing --output files")
    return parser


def main(args):
    models = [parse_model(m) for m in (args.model or [str(SHIPPED_MODELS_DIR / "fer_model.int8.onnx")])]
    names = [n for n, _ in models]
    if len(set(names)) != len(names):
        raise FERError(f"two models share the name {next(n for n in names if names.count(n) > 1)}: "
                       f"name them with --model NAME=PATH")
    for _, path in models:
        if not Path(path).is_file():
            raise FERError(f"model file not found: {path}")
    for out in args.output or []:
        check_writable(out, "--output file", overwrite=args.overwrite)
    predictors = {name: Predictor(path, device=args.device, provider=args.provider, tta=args.tta)
                  for name, path in models}
    next(iter(predictors.values())).set_threads()
    for name, p in predictors.items():
        print(f"{name}: {p.describe()}")

    report = robustness(predictors, args.data, batch_size=args.batch_size, votes=args.votes)
    text = format_table(report)
    verdicts = ship_verdicts(report)
    labels = ", FER+ majority labels" if args.votes else ""
    print(f"\naccuracy (%) on {args.data}{labels}, {report['images']} images, {'mirror TTA' if args.tta else 'no TTA'}:")
    print(text)
    for line in verdicts:
        print(line)

    for out in args.output or []:
        if out.lower().endswith(".json"):
            results = {n: {k: v for k, v in r.items() if k != "correct"} for n, r in report["results"].items()}
            write_json(out, {"data": str(args.data), "tta": args.tta, "conditions": CONDITIONS,
                             "models": {n: str(p) for n, p in models}, **report, "results": results,
                             "ship_rule": verdicts})
        else:
            with atomic_path(out) as tmp:
                tmp.write_text(f"Accuracy (%) on {args.data} ({report['images']} images, "
                               f"{'mirror TTA' if args.tta else 'no TTA'}):\n\n{text}\n"
                               + "".join(f"\n{line}\n" for line in verdicts))
        print(f"-> {out}")


if __name__ == "__main__":
    run_main(main, get_args_parser())
