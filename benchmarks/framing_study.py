"""How a detected face should be cropped for the FER-2013 classifier, and which detector thresholds to use.

    python -m benchmarks.framing_study                          # fit on dataset/val_new, report on dataset/test
    python -m benchmarks.framing_study --fit_limit 300 --test_limit 300 --no_haar     # a quick look

FER-2013 faces (48 x 48) are upscaled 2-6x and put at a random place in a canvas 1.6-3x their size, its
border made by smearing the face's edge pixels outwards (no step at the true rectangle for the detector to
snap to, no mirrored half faces). The real FaceDetector (detection size, passes) finds them; the box-to-crop
mapping (scale, offset; or from the 5 landmarks) is fitted on the fit split so the crop reproduces the
48 x 48 framing, and reported on the test split: mean IoU with the true face rectangle and the accuracy of
the shipped model, against --no_detect on the same faces (a missed face counts as wrong). Eye alignment
(rotating the crop so the eyes are level) is measured too. Last, the score threshold: detection of the
FER faces and of the Test_files cases (benchmarks/detection_cases.py, the test clip at detect_every 1) per
threshold. Figures go to models/DETECTOR.md by hand.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from fer_common.datasets.folders import list_samples
from fer_common.infer.detection import (FRAME_OFFSET, FRAME_SCALE, SCORE_THRESHOLD, SMALL_FACE_SCORE, FaceDetector,
                                  crop_faces, expand_box, fer_framing, keep_scores)
from fer_common.infer.predictor import Predictor

from .common import REPO
from .detection_cases import detection_cases, match

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fit_data", default=str(REPO / "dataset" / "val_new"), help="class folders to fit the crop on")
    p.add_argument("--test_data", default=str(REPO / "dataset" / "test"), help="class folders to report on")
    p.add_argument("--fit_limit", type=int, default=1000, help="faces of the fit split to use (0: all)")
    p.add_argument("--test_limit", type=int, default=0, help="faces of the test split to use (0: all)")
    p.add_argument("--checkpoint", default=str(REPO / "models" / "fer_model.onnx"), help="classifier")
    p.add_argument("--border", default="replicate", choices=["replicate", "reflect", "constant"],
                   help="how the canvas around the face is filled: its edge pixels smeared outwards, mirrored, "
                        "or its mean gray")
    p.add_argument("--no_haar", dest="haar", action="store_false", help="skip the Haar reference rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write all figures here")
    return p


def load_faces(folder, limit, rng, class_names):
    samples, folder_classes = list_samples(folder)
    files = [(path, class_names.index(folder_classes[k])) for path, k in samples]   # the model's class order
    if limit and limit < len(files):
        files = [files[i] for i in sorted(rng.choice(len(files), limit, replace=False))]
    return files


BORDERS = {"replicate": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT}


def make_canvas(face, rng, border="replicate"):
    """(BGR canvas, true rectangle [x, y, s, s]): the face upscaled and placed with smeared borders."""
    s = int(48 * rng.uniform(2, 6))
    big = cv2.resize(face, (s, s), interpolation=cv2.INTER_CUBIC)
    cw, ch = (int(s * rng.uniform(1.6, 3.0)) for _ in range(2))
    x, y = int(rng.integers(0, cw - s + 1)), int(rng.integers(0, ch - s + 1))
    canvas = cv2.copyMakeBorder(big, y, ch - s - y, x, cw - s - x, BORDERS[border], value=int(big.mean()))
    return cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR), np.array([x, y, s, s], np.float64)


def iou(a, b):
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def collect(files, detector, rng, border, haar=None):
    """Per face: label, canvas, true rectangle, best YuNet row at score >= 0.3 (or None), the best row that
    passes the shipped thresholds (or None), all rows, and Haar's best box."""
    out = []
    for path, label in files:
        face = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        canvas, rect = make_canvas(face, rng, border)
        faces = detector.yunet_detections(canvas)
        scale = min(1.0, detector.detect_size / min(canvas.shape[:2]))
        shipped = faces[keep_scores(faces, SCORE_THRESHOLD, SMALL_FACE_SCORE, scale)]
        sample = {"label": label, "canvas": canvas, "rect": rect, "faces": faces, "scale": scale,
                  "face": faces[np.argmax(faces[:, 14])] if len(faces) else None,
                  "shipped": shipped[np.argmax(shipped[:, 14])] if len(shipped) else None}
        if haar is not None:
            boxes = haar.yunet_detections(canvas)
            sample["haar"] = boxes[np.argmax(boxes[:, 2] * boxes[:, 3])] if len(boxes) else None
        out.append(sample)
    return out


def landmark_geometry(row):
    eyes = (row[4:6] + row[6:8]) / 2
    mouth = (row[10:12] + row[12:14]) / 2
    return eyes, mouth, float(np.linalg.norm(mouth - eyes))


def fit_box(samples):
    """Median scale (true side / sqrt(w h)) and centre offset (in box widths / heights)."""
    f = np.array([s["face"] for s in samples])
    r = np.array([s["rect"] for s in samples])
    side = np.sqrt(f[:, 2] * f[:, 3])
    scale = np.median(r[:, 2] / side)
    dx = np.median((r[:, 0] + r[:, 2] / 2 - f[:, 0] - f[:, 2] / 2) / f[:, 2])
    dy = np.median((r[:, 1] + r[:, 3] / 2 - f[:, 1] - f[:, 3] / 2) / f[:, 3])
    return float(scale), (float(dx), float(dy))


def fit_landmarks(samples):
    """Crop side = k * eye-mouth distance, centre = eye midpoint + (a, b) * that distance."""
    ks, ax, by = [], [], []
    for s in samples:
        eyes, _, d = landmark_geometry(s["face"])
        r = s["rect"]
        ks.append(r[2] / d)
        ax.append((r[0] + r[2] / 2 - eyes[0]) / d)
        by.append((r[1] + r[3] / 2 - eyes[1]) / d)
    return float(np.median(ks)), (float(np.median(ax)), float(np.median(by)))


def landmark_boxes(faces, k, offset):
    out = []
    for row in faces:
        eyes, _, d = landmark_geometry(row)
        side = k * d
        cx, cy = eyes[0] + offset[0] * d, eyes[1] + offset[1] * d
        out.append([cx - side / 2, cy - side / 2, side, side])
    return np.round(np.array(out)).astype(np.int32).reshape(-1, 4)


def aligned_crop(canvas, box, row):
    """The square crop of `box`, rotated about its centre so that the eyes are level."""
    (rx, ry), (lx, ly) = row[4:6], row[6:8]
    angle = np.degrees(np.arctan2(ly - ry, lx - rx))
    x, y, w, h = box
    m = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), angle, 1.0)
    m[:, 2] -= (x, y)
    return cv2.warpAffine(canvas, m, (int(w), int(h)), borderMode=cv2.BORDER_REPLICATE)


def evaluate(samples, predictor, framings, key="face"):
    """Accuracy (%) of each framing over all samples (a missed face is wrong) and mean IoU on the found ones."""
    labels = np.array([s["label"] for s in samples])
    found = np.array([s[key] is not None for s in samples])
    # --no_detect: the upscaled face image itself, as inference.py --no_detect classifies a face crop file
    crops = [s["canvas"][int(s["rect"][1]):int(s["rect"][1] + s["rect"][3]),
                         int(s["rect"][0]):int(s["rect"][0] + s["rect"][2])] for s in samples]
    no_detect = predictor(crops).probabilities.argmax(1) == labels
    res = {}
    if key == "face":
        res["--no_detect (true rectangle)"] = {"accuracy": 100 * float(no_detect.mean()), "iou": 1.0}
    det = [dict(s, face=s[key]) for s in samples if s[key] is not None]
    for name, make in framings.items():
        boxes, crops = make(det)
        pred = predictor(crops).probabilities.argmax(1)
        correct = np.zeros(len(samples), bool)
        correct[found] = pred == labels[found]
        ious = [iou(b, s["rect"]) for b, s in zip(boxes, det)]
        res[name] = {"accuracy": 100 * float(correct.mean()), "accuracy_found": 100 * float((pred == labels[found]).mean()),
                     "iou": float(np.mean(ious)), "found_%": 100 * float(found.mean()),
                     "no_detect_found": 100 * float(no_detect[found].mean())}
    return res


def clip_errors(detector, threshold, video=REPO / "Test_files" / "Video_Test_1.mp4"):
    """(missed faces, false boxes) over the test clip, one face in frames 0-49, two in 50-79."""
    cap = cv2.VideoCapture(str(video))
    missed = false = i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n = int((detector.yunet_detections(frame)[:, 14] >= threshold).sum())
        expected = 1 if i < 50 else 2
        missed += max(0, expected - n)
        false += max(0, n - expected)
        i += 1
    cap.release()
    return missed, false


def threshold_study(fer_samples, min_face):
    """Per (threshold, threshold for faces under 32 px at the first pass): FER faces found, false boxes."""
    detector = FaceDetector(score_threshold=0.2, small_face_score=0.2, min_face=min_face)
    portrait = cv2.imread(str(REPO / "Test_files" / "IMG_test_1.jpg"))
    cases = [(name, detector.yunet_detections(image), centres, min(1.0, detector.detect_size / min(image.shape[:2])))
             for name, image, centres in detection_cases(portrait)]
    cap = cv2.VideoCapture(str(REPO / "Test_files" / "Video_Test_1.mp4"))
    clip = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        clip.append(detector.yunet_detections(frame))
        clip_scale = min(1.0, detector.detect_size / min(frame.shape[:2]))
    cap.release()
    rows = []
    for t, small in [(t, t) for t in THRESHOLDS] + [(t, SMALL_FACE_SCORE) for t in (0.3, 0.4, 0.45, 0.5)]:
        keep = lambda faces, scale: faces[keep_scores(faces, t, small, scale)]  # noqa: E731
        row = {"threshold": t, "small_face_threshold": max(t, small)}
        kept = [keep(s["faces"], s["scale"]) for s in fer_samples]
        row["fer_found_%"] = 100 * float(np.mean([len(k) > 0 for k in kept]))
        row["fer_extra_boxes"] = int(sum(max(0, len(k) - 1) for k in kept))
        found = false = total = 0
        for _, faces, centres, scale in cases:
            f, x = match(keep(faces, scale)[:, :4], centres)
            found, false, total = found + f, false + x, total + len(centres)
        row["cases_missed"], row["cases_false"] = total - found, false
        counts = [len(keep(faces, clip_scale)) for faces in clip]
        expected = [1 if i < 50 else 2 for i in range(len(clip))]
        row["clip_missed"] = sum(max(0, e - n) for e, n in zip(expected, counts))
        row["clip_false"] = sum(max(0, n - e) for e, n in zip(expected, counts))
        rows.append(row)
    return rows


def main(args):
    rng = np.random.default_rng(args.seed)
    detector = FaceDetector(score_threshold=0.3, small_face_score=0.3)    # low: thresholds are studied below
    haar = FaceDetector("haar") if args.haar else None
    predictor = Predictor(args.checkpoint, "default", device="cpu", provider="cpu")
    t0 = time.perf_counter()
    fit = collect(load_faces(args.fit_data, args.fit_limit, rng, predictor.class_names), detector, rng, args.border)
    test = collect(load_faces(args.test_data, args.test_limit, rng, predictor.class_names), detector, rng, args.border, haar)
    print(f"{len(fit)} fit faces ({args.fit_data}), {len(test)} test faces ({args.test_data}); "
          f"detected {sum(s['face'] is not None for s in fit)} / {sum(s['face'] is not None for s in test)} "
          f"at score >= 0.3 [{time.perf_counter() - t0:.0f} s]")
    fit_found = [s for s in fit if s["face"] is not None]
    scale, offset = fit_box(fit_found)
    k, loffset = fit_landmarks(fit_found)
    print(f"fitted box framing: side = {scale:.3f} * sqrt(w h), centre = box centre + ({offset[0]:+.3f} w, "
          f"{offset[1]:+.3f} h); landmark framing: side = {k:.3f} * eye-mouth distance, centre = eye midpoint + "
          f"({loffset[0]:+.3f}, {loffset[1]:+.3f}) * that distance; shipped: {FRAME_SCALE}, {FRAME_OFFSET}")

    def crops_of(boxes, det):
        return boxes, [crop_faces(s["canvas"], [b])[0] for b, s in zip(boxes, det)]

    def box_framing(sc, off):
        return lambda det: crops_of(fer_framing(np.array([s["face"] for s in det]), sc, off), det)

    def margin_framing(det):       # the framing before this study: the detector's box + 10% on every side
        boxes = np.array([expand_box(s["face"][:4], 0.1, s["canvas"].shape) for s in det])
        return crops_of(boxes, det)

    def landmark_framing(det):
        return crops_of(landmark_boxes(np.array([s["face"] for s in det]), k, loffset), det)

    def mean_framing(det):
        a = fer_framing(np.array([s["face"] for s in det]), scale, offset)
        b = landmark_boxes(np.array([s["face"] for s in det]), k, loffset)
        return crops_of(np.round((a + b) / 2).astype(np.int32), det)

    def aligned_framing(det):
        boxes = fer_framing(np.array([s["face"] for s in det]), scale, offset)
        return boxes, [aligned_crop(s["canvas"], b, s["face"]) for b, s in zip(boxes, det)]

    framings = {"YuNet box + 10% margin (before)": margin_framing,
                "fitted box framing": box_framing(scale, offset),
                "shipped FRAME_SCALE / FRAME_OFFSET": box_framing(FRAME_SCALE, FRAME_OFFSET),
                "fitted landmark framing": landmark_framing,
                "mean of box and landmark framings": mean_framing,
                "fitted box framing, eyes aligned": aligned_framing}
    results = {}
    for split, samples in (("fit", fit), ("test", test)):
        results[split] = evaluate(samples, predictor, framings)
        # End to end as the scripts run: the shipped thresholds and framing; Haar with its 10% margin.
        results[split].update(evaluate(samples, predictor, {
            f"shipped YuNet (scores {SCORE_THRESHOLD} / {SMALL_FACE_SCORE}) + shipped framing":
                box_framing(FRAME_SCALE, FRAME_OFFSET)}, key="shipped"))
        if split == "test" and args.haar:
            results[split].update(evaluate(samples, predictor, {"Haar + 10% margin": margin_framing}, key="haar"))
        print(f"\n{split} split ({len(samples)} faces; the YuNet rows above the line use every face found at "
              f"score >= 0.3, {sum(s['face'] is not None for s in samples)}):")
        print("| framing | accuracy % (miss = wrong) | faces found % | accuracy % on found faces | "
              "--no_detect on the same faces | mean IoU |\n|---|---|---|---|---|---|")
        for name, r in results[split].items():
            print(f"| {name} | {r['accuracy']:.2f} | {r.get('found_%', 100):.2f} | "
                  f"{r.get('accuracy_found', r['accuracy']):.2f} | {r.get('no_detect_found', r['accuracy']):.2f} | "
                  f"{r['iou']:.3f} |")
    thresholds = {}
    for min_face in (24, 0):
        thresholds[min_face] = threshold_study(test, min_face)
        print(f"\nthresholds (min_face {min_face}; FER: the test split's canvases; cases: "
              f"benchmarks/detection_cases.py; clip: Video_Test_1.mp4, 110 faces in 80 frames):")
        print("| score threshold | under 32 px | FER faces found % | FER extra boxes | cases missed | cases false "
              "| clip missed | clip false |\n|---|---|---|---|---|---|---|---|")
        for r in thresholds[min_face]:
            print(f"| {r['threshold']} | {r['small_face_threshold']} | {r['fer_found_%']:.2f} | {r['fer_extra_boxes']} | {r['cases_missed']} | "
                  f"{r['cases_false']} | {r['clip_missed']} | {r['clip_false']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"box_framing": [scale, offset], "landmark_framing": [k, loffset],
                                               "results": results, "thresholds": thresholds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
