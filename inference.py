"""Classify the emotions of the faces in one or more images (files or folders).

    python inference.py Test_files/IMG_test_1.jpg --model_type advanced
    python inference.py Test_files/IMG_test_1.jpg --use_onnx --model_type advanced

Finds the faces (OpenCV's Haar cascade by default), classifies them all in one batch per image and prints
each face's emotions, most likely first; --json prints machine-readable results instead. Images that
already are face crops: --no_detect. Model file: --checkpoint PATH, else fer_model.pth (default model) or
fer_model_advanced.pth (advanced) in the current folder (.onnx with --use_onnx), else the shipped
models/fer_model.pth. Exit code: 0 if some image had a face, 2 if none had, 1 on an error.
"""

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from fer_common.cli import FERError, make_parser, run_main
from fer_common.detection import add_detector_args, crop_faces, detector_from_args
from fer_common.files import IMAGE_EXTENSIONS, atomic_path, check_writable
from fer_common.overlay import Overlay, upscale_small
from fer_common.predictor import add_predictor_args, predictor_from_args
from fer_common.preprocess import read_image


def get_args_parser():
    parser = make_parser(__doc__)
    g = parser.add_argument_group("Data")
    g.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images (sorted)")
    g.add_argument("--no_detect", action="store_true",
                   help="classify each whole image as one face (for images that already are face crops)")
    add_predictor_args(parser, tta=True)
    add_detector_args(parser)
    g = parser.add_argument_group("Output")
    g.add_argument("--json", action="store_true",
                   help="print a JSON list, one object per image: image, faces (box, probabilities)")
    g.add_argument("--embedding", action="store_true", help="with --json, add each face's 128-d embedding")
    g.add_argument("--save_annotated", metavar="PATH",
                   help="write the image with boxes and probability bars here (a folder for several images)")
    g.add_argument("--overwrite", action="store_true", help="replace existing annotated images")
    return parser


def list_images(inputs) -> list[Path]:
    """Files as given; folders expanded to the images directly inside them, sorted by name."""
    images = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise FERError(f"no images in folder {item} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
            images += found
        elif item.is_file():
            images.append(item)
        else:
            raise FERError(f"image not found: {item}")
    return images


def annotated_paths(images, target) -> list[Path]:
    """One output file per image: `target` itself for a single image file, else target/<name> (made unique)."""
    target = Path(target)
    if len(images) == 1 and not target.is_dir() and target.suffix.lower() in IMAGE_EXTENSIONS:
        return [target]
    if target.suffix.lower() in IMAGE_EXTENSIONS and not target.is_dir():
        raise FERError(f"--save_annotated {target}: give a folder when annotating {len(images)} images")
    paths, seen = [], set()
    for image in images:
        name, stem, suffix, k = image.name, image.stem, image.suffix, 1
        while name in seen:
            k += 1
            name = f"{stem}_{k}{suffix}"
        seen.add(name)
        paths.append(target / name)
    return paths


def write_image(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise FERError(f"cannot encode {path} (unsupported extension?)")
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            tmp.write_bytes(data.tobytes())
    except OSError as e:
        raise FERError(f"cannot write {path} ({e.strerror})") from None


def format_faces(image: Path, boxes, probabilities, class_names) -> str:
    """A small aligned table per face, emotions sorted by probability."""
    if len(boxes) == 0:
        return f"{image}: no face found (if the image is already a face crop, use --no_detect)"
    width = max(map(len, class_names))
    lines = [f"{image}: {len(boxes)} face{'s' if len(boxes) > 1 else ''}"]
    for i, (box, probs) in enumerate(zip(boxes, probabilities), 1):
        lines.append(f"  face {i} at [x={box[0]}, y={box[1]}, w={box[2]}, h={box[3]}]")
        for k in np.argsort(-probs, kind="stable"):
            p = float(probs[k])
            lines.append(f"    {class_names[k]:<{width}}  {p:6.1%}  {'#' * round(p * 20)}")
    return "\n".join(lines)


def main(args):
    images = list_images(args.images)
    outputs = annotated_paths(images, args.save_annotated) if args.save_annotated else [None] * len(images)
    for path in filter(None, outputs):
        check_writable(path, "annotated image", args.overwrite)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print   # keep stdout pure JSON
    predictor = predictor_from_args(args, log=log)
    detector = None if args.no_detect else detector_from_args(args)
    overlay = Overlay(predictor.class_names)
    results, with_faces = [], 0
    for image_path, out_path in zip(images, outputs):
        rgb = read_image(image_path, 3)
        if rgb is None:
            raise FERError(f"not an image (cannot decode): {image_path}")
        frame = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if args.no_detect:
            boxes = np.array([[0, 0, frame.shape[1], frame.shape[0]]], np.int32)
            crops = [frame]
        else:
            boxes = detector.detect(frame)
            crops = crop_faces(frame, boxes)
        probabilities, embeddings = predictor(crops)       # all faces of the image in one batch
        with_faces += len(boxes) > 0
        if args.json:
            faces = []
            for box, probs, emb in zip(boxes, probabilities, embeddings):
                face = {"box": [int(v) for v in box],
                        "probabilities": {n: round(float(p), 6) for n, p in zip(predictor.class_names, probs)},
                        "top_emotion": predictor.class_names[int(np.argmax(probs))]}
                if args.embedding:
                    face["embedding"] = [round(float(v), 6) for v in emb]
                faces.append(face)
            results.append({"image": str(image_path), "faces": faces})
        else:
            print(format_faces(image_path, boxes, probabilities, predictor.class_names))
        if out_path is not None:
            canvas, canvas_boxes = upscale_small(frame, boxes)
            overlay.draw(canvas, canvas_boxes, probabilities)
            write_image(out_path, canvas)
            log(f"annotated -> {out_path}")
    if args.json:
        print(json.dumps(results, indent=2))
    if with_faces == 0:
        log("no face found in any image" + ("" if args.no_detect else " (face crops? use --no_detect)"))
        return 2
    return 0


if __name__ == "__main__":
    run_main(main, get_args_parser())
