"""Classify the emotions of the faces in one or more images (files or folders), up to whole data sets.

    python inference.py Test_files/IMG_test_1.jpg                   # or: fer analyse Test_files/IMG_test_1.jpg
    python inference.py Test_files/IMG_test_1.jpg --model_type advanced
    python inference.py Test_files/IMG_test_1.jpg --use_onnx --model_type advanced
    python inference.py dataset/test --recursive --no_detect --output results.jsonl     # add --resume after a cut

Finds the faces (see --detector), classifies them in batches across images on worker threads, and prints
each face's emotions, most likely first; --json prints machine-readable results instead, and --output
streams them to a .jsonl or .csv file (with a .meta.json beside it naming the model) that --resume
continues. Every image is a result, one without a face or an unreadable one with its `error`. Images that
already are face crops: --no_detect. Unreadable images are reported (--strict: an error). Model file:
--checkpoint PATH, else fer_model.pth (default model) or fer_model_advanced.pth (advanced) in the current
folder (.onnx with --use_onnx), else the shipped int8 models/fer_model.int8.onnx. Exit code: 0 if some
image had a face, 2 if none had, 1 on an error.
"""

import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fer_common.infer.bulk import DEFAULT_BATCH_SIZE, Tally, default_workers, iter_results, list_images
from fer_common.cli import image_output, make_parser, output_file, positive_int
from fer_common.infer.cluster import classifier_settings, init_ray, iter_results_ray
from fer_common.infer.detection import add_detector_args, detector_from_args, detector_settings
from fer_common.errors import FERError
from fer_common.files import IMAGE_EXTENSIONS, check_outputs, check_outputs_distinct, check_writable, printable, writable_image_extension, write_image
from fer_common.infer.overlay import Overlay, annotate
from fer_common.infer.predictor import add_predictor_args, model_inputs, predictor_from_args
from fer_common.preprocess import read_image
from fer_common.results import probability_matrix
from fer_common.infer.writers import check_results_file, meta_path, open_writer, provenance


def get_args_parser():
    parser = make_parser(__doc__)
    g = parser.add_argument_group("Data")
    g.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images (sorted)")
    g.add_argument("--recursive", action="store_true", help="also take the images in sub-folders of a folder")
    g.add_argument("--no_detect", action="store_true",
                   help="classify each whole image as one face (for images that already are face crops)")
    g.add_argument("--batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help="images read per task, and faces per forward pass")
    g.add_argument("--workers", type=positive_int, default=default_workers(),
                   help="threads reading, detecting and classifying (one per core); with --engine ray: Ray "
                        "workers across the cluster, one CPU and one copy of the model each")
    g.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local: threads on this machine; ray: Ray Data workers on a Ray cluster (README, Bulk "
                        "inference on a cluster; pip install 'fer-toolkit[cluster]')")
    g.add_argument("--address", metavar="ADDR",
                   help="--engine ray: the cluster: auto (the one this machine is a node of: `ray start` ran "
                        "here), HEAD_IP:6379, or none: a new local one for this run")
    g.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of going on")
    add_predictor_args(parser, tta=True)
    add_detector_args(parser)
    g = parser.add_argument_group("Output")
    g.add_argument("--json", action="store_true",
                   help="print a JSON list, one result per image: source, size, error, faces (box, score, "
                        "top emotion, confidence, probabilities)")
    g.add_argument("--embedding", action="store_true",
                   help="with --json or a .jsonl --output, add each face's 128-d embedding")
    g.add_argument("--output", metavar="PATH", type=output_file(".jsonl", ".csv", ".parquet"),
                   help="stream results to this file as they come: .jsonl (one --json result per line) or "
                        ".csv (one row per face, the columns of the README's result table); .parquet: the "
                        ".csv's columns, one file written at the end (needs pyarrow)")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: keep the results already in --output, do the other images")
    g.add_argument("--save_annotated", metavar="PATH", type=image_output,
                   help="write the image with numbered boxes and probability bars here (a folder for several)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --output or annotated images")
    return parser


def annotated_paths(images, target) -> list[Path]:
    """One output file per image: `target` itself for a single image file, else target/<name> (made unique;
    a .png for an image whose format holds no colour, such as .pgm)."""
    target = Path(target)
    if len(images) == 1 and not target.is_dir() and target.suffix.lower() in IMAGE_EXTENSIONS:
        return [target]
    if target.suffix.lower() in IMAGE_EXTENSIONS and not target.is_dir():
        raise FERError(f"--save_annotated {target}: give a folder when annotating {len(images)} images")
    paths, seen, colour = [], set(), {}
    for image in map(Path, images):
        stem, suffix, k = image.stem, image.suffix, 1
        if suffix.lower() not in colour:            # .pgm, .pbm hold no colour: the drawing goes to a .png
            colour[suffix.lower()] = writable_image_extension(suffix)
        suffix = suffix if colour[suffix.lower()] else ".png"
        name = stem + suffix
        while name in seen:
            k += 1
            name = f"{stem}_{k}{suffix}"
        seen.add(name)
        paths.append(target / name)
    return paths


def format_result(result, class_names) -> str:
    """A small aligned table per face, emotions sorted by probability."""
    if result.error is not None and not result.faces:
        hint = " (if the image is already a face crop, use --no_detect)" if result.size else ""
        return f"{result.source}: {result.error}{hint}"
    width = max(map(len, class_names))
    n = len(result.faces)
    lines = [f"{result.source}: {n} face{'s' if n > 1 else ''}"]
    for i, (face, probs) in enumerate(zip(result.faces, probability_matrix(result, class_names)), 1):
        x, y, w, h = face.box
        score = f", score {face.score:.2f}" if face.score is not None else ""
        lines.append(f"  face {i} at [x={x}, y={y}, w={w}, h={h}]{score}")
        for k in np.argsort(-probs, kind="stable"):
            p = float(probs[k])
            lines.append(f"    {class_names[k]:<{width}}  {p:6.1%}  {'#' * round(p * 20)}")
    return "\n".join(lines)


class JsonListPrinter:
    """Prints a JSON list one element at a time, exactly as json.dumps(list, indent=2) would, in flat memory."""

    def __init__(self, file=None):
        self.file, self.count = file or sys.stdout, 0

    def add(self, obj) -> None:
        text = json.dumps(obj, indent=2, allow_nan=False).replace("\n", "\n  ")
        self.file.write(("[\n  " if self.count == 0 else ",\n  ") + text)
        self.count += 1

    def close(self) -> None:
        self.file.write("[]\n" if self.count == 0 else "\n]\n")
        self.file.flush()


def check_paths(args, images) -> list | None:
    """Every output checked before any work: never an input, never inside an input folder, never replaced
    without --overwrite. Returns the annotated images' paths."""
    if args.resume and not args.output:
        raise FERError("--resume needs --output (the .jsonl or .csv file to continue)")
    if args.address and args.engine != "ray":
        raise FERError("--address names a Ray cluster: add --engine ray (or drop --address)")
    if args.output:
        check_results_file(args.output, args.resume, args.overwrite)
    annotated = annotated_paths(images, args.save_annotated) if args.save_annotated else None
    outputs = {"--output": args.output, "its provenance file": meta_path(args.output) if args.output else None,
               "--save_annotated": args.save_annotated}
    check_outputs(outputs, args.overwrite, data={f"input folder {p}": p for p in args.images if Path(p).is_dir()},
                  inputs={**{f"input {p}": p for p in args.images if Path(p).is_file()}, **model_inputs(args)},
                  own_rule=tuple(outputs))       # the results file's rule is above; annotated images just below
    for path in annotated or ():
        check_writable(path, "annotated image", args.overwrite)
    if annotated:
        # An annotated image must not replace an input: one set look-up per image, not a comparison of every
        # output with every input (quadratic in the folder's size).
        inputs = {str(Path(p).resolve()): p for p in images}
        for out in annotated:
            if str(out.resolve()) in inputs:
                check_outputs_distinct({"--save_annotated": out}, inputs={"image": inputs[str(out.resolve())]})
    return annotated


def main(args):
    images = list_images(args.images, args.recursive)
    annotated = check_paths(args, images)
    if args.engine == "ray":
        where = "a new local cluster" if args.address in (None, "", "none", "local") else f"the cluster {args.address}"
        print(f"starting Ray: {where}; each worker then loads the model and the detector (a few seconds)",
              file=sys.stderr, flush=True)
        init_ray(args.address, args.workers)        # before any output: no Ray, or no cluster there, is one line
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print   # keep stdout pure JSON
    predictor = predictor_from_args(args, log=log)
    predictor.set_threads()
    if not args.no_detect:
        detector_from_args(args)                    # a bad detector setting fails here, before any work
    overlay = Overlay(predictor.class_names) if annotated else None
    tally, json_list = Tally(), JsonListPrinter() if args.json else None
    started = time.perf_counter()
    with ExitStack() as stack:
        writer = open_output(args, predictor, log, stack)
        done = writer.done if writer is not None else ()
        # results files hold names as printable() writes them (a name that is not UTF-8: its bytes escaped)
        todo = [i for i, p in enumerate(images) if printable(p) not in done] if done else range(len(images))
        if len(todo) < len(images):
            log(f"resuming: {len(images) - len(todo)} of {len(images)} images are already in {args.output}")
        bar = stack.enter_context(tqdm(total=len(todo), unit="img", desc="images", file=sys.stderr, delay=2,
                                       dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30,
                                       disable=len(todo) < 2))       # no bar for one photo
        results = engine_results(args, predictor, [images[i] for i in todo])
        stack.callback(results.close)               # stops the workers on an error or Ctrl-C

        def say_how_to_resume(kind, *_):            # on Ctrl-C; returns None, so the interrupt goes on
            if kind is KeyboardInterrupt and writer is not None:
                print(f"stopped after {tally.read} images, which {args.output} keeps: add --resume to the same "
                      "command to go on", file=sys.stderr)
        stack.push(say_how_to_resume)
        for r in results:
            if args.engine == "ray" and tally.read + tally.skipped_count == 0:
                bar.reset(total=bar.total)          # the time left counts from the first result, not Ray's start-up
            tally.add(r)
            bar.update(1)
            if r.size is None and args.strict:
                hint = " (--strict; rerun with --resume to go on from here)" if writer else " (--strict)"
                raise FERError(f"not an image ({r.error}): {r.source}{hint}")
            if writer is not None:
                writer.write(r)
            if json_list is not None:
                json_list.add(r.to_dict(args.embedding))
            elif writer is None and r.size is not None:
                tqdm.write(format_result(r, predictor.class_names), file=sys.stdout)
            if annotated is not None and r.size is not None:
                save_annotated(r, annotated[todo[r.index]], overlay, log)
            if tally.read % 128 == 0:
                bar.set_postfix_str(f"{tally.faces} faces", refresh=False)
        bar.set_postfix_str(f"{tally.faces} faces", refresh=False)
    if json_list is not None:
        json_list.close()
    return report(args, tally, writer, len(images), len(todo), time.perf_counter() - started, log)


def open_output(args, predictor, log, stack):
    """The --output writer (entered on `stack`), with this run's provenance; None without --output."""
    if not args.output:
        return None
    meta = provenance(predictor, args.tta, None if args.no_detect else args.detector, args.embedding)
    writer = stack.enter_context(open_writer(args.output, predictor.class_names, meta, args.embedding,
                                             args.resume, args.overwrite))
    if writer.repaired_bytes:
        log(f"{args.output}: cut off what a stopped run left half-written ({writer.repaired_bytes} bytes)")
    return writer


def engine_results(args, predictor, paths: list):
    """The Results of `paths`, in order: worker threads here, or the same batches on a Ray cluster."""
    if args.engine == "ray":
        settings = classifier_settings(predictor, args.tta, args.device, args.provider,
                                       None if args.no_detect else detector_settings(args))
        return iter_results_ray(paths, settings, args.batch_size, args.workers, args.address)
    make_detector = None if args.no_detect else (lambda: detector_from_args(args))   # one per worker thread
    return iter_results(predictor, paths, make_detector, args.batch_size, args.workers)


def report(args, tally, writer, n_images: int, n_todo: int, seconds: float, log) -> int:
    """The closing lines (unreadable images, the summary) and the exit code: 0 if some image had a face,
    2 if none had; only unreadable images is an error."""
    if tally.read == 0 and tally.skipped_count and not (writer and writer.done):
        more = f" (and {tally.skipped_count - 1} more)" if tally.skipped_count > 1 else ""
        raise FERError(f"not an image (cannot decode): {tally.skipped[0]}{more}")
    if tally.skipped_count:
        print(tally.skipped_report(), file=sys.stderr)
    if n_images > 1 or writer is not None:
        rate = f", {(tally.read + tally.skipped_count) / seconds:.0f} images/s" if seconds > 0 and n_todo else ""
        where = f"; results -> {args.output}" if writer is not None else ""
        log(f"{tally.summary()} in {seconds:.1f} s{rate}{where}")
    with_faces = tally.read - tally.no_face + (writer.done_with_faces if writer else 0)
    if with_faces == 0:
        log("no face found in any image" + ("" if args.no_detect else " (face crops? use --no_detect)"))
        return 2
    return 0


def save_annotated(result, path, overlay, log) -> None:
    image = read_image(result.source, 3, bgr=True)        # again: results carry no pixels, to keep memory flat
    if image is None:
        raise FERError(f"not an image (cannot decode): {result.source} (it changed during the run?)")
    write_image(path, annotate(image, result, overlay))
    log(f"annotated -> {path}")
