"""Which YuNet detection size for live video: per-frame cost against the decode+encode floor, interleaved.

    python -m benchmarks.detect_size_study            # about 30 s on 2 cores

For each of 5 rounds, the floor, then the real VideoPipeline (shipped int8 model, one YuNet pass) with
each detection size and detection setting, on Test_files/Video_Test_1.mp4 (480x360) and a 1280x720 copy:
interleaving the configurations keeps a change in the machine's load from favouring one of them. Prints
the median ms per frame and its ratio to the median floor; which faces each size finds is checked by
tests/infer/test_detection.py. Figures in benchmarks/README.md.
"""

import statistics
import tempfile
from pathlib import Path

from fer_common.infer.detection import FaceDetector
from fer_common.infer.predictor import Predictor
from fer_common.video.options import VIDEO_MIN_FACE
from fer_common.video.pipeline import VideoPipeline

from .bench_video import DEFAULT_VIDEO, make_scaled_clip, one_pass
from .common import REPO

SIZES = (240, 320)
SETTINGS = ((3, True), (1, True), (1, False))      # (detect_every, threaded)


def main(rounds: int = 5) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fer_detect_size_"))
    clips = {"480x360": (DEFAULT_VIDEO, 80), "1280x720": (make_scaled_clip(DEFAULT_VIDEO, work / "hd.mp4", (1280, 720), 40), 40)}
    predictor = Predictor(REPO / "models" / "fer_model.int8.onnx", "default", device="cpu", provider="cpu")
    ms = {}
    for _ in range(rounds):
        for clip, (path, frames) in clips.items():
            p = one_pass(path, work / "out.mp4", frames)
            ms.setdefault((clip, "floor: decode + encode only"), []).append(p["wall"] / p["frames"] * 1000)
            for size in SIZES:
                for every, threaded in SETTINGS:
                    detector = FaceDetector(min_face=VIDEO_MIN_FACE, detect_size=size)
                    pipeline = VideoPipeline(predictor, detector, detect_every=every, threaded=threaded)
                    p = one_pass(path, work / "out.mp4", frames, pipeline)
                    name = f"--detect_size {size}, detect_every {every}, {'threaded' if threaded else '--no_threaded'}"
                    ms.setdefault((clip, name), []).append(p["wall"] / p["frames"] * 1000)
    print(f"| clip | pipeline | ms per frame (median of {rounds}) | x floor |\n|---|---|---|---|")
    for (clip, name), values in ms.items():
        floor = statistics.median(ms[(clip, "floor: decode + encode only")])
        print(f"| {clip} | {name} | {statistics.median(values):.2f} | {statistics.median(values) / floor:.2f}x |")
    return ms


if __name__ == "__main__":
    main()
