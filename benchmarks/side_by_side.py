"""Today's tree against an earlier commit, in one run: the scripts as a user types them, runs alternated.

An earlier commit is checked out in a temporary git worktree; each round runs every case once in each tree,
alternating which goes first, so a machine that speeds up or slows down during the run touches both alike.
The figure is each script's own summary line (video: average FPS; folders: images/s, start-up and model
loading left out), and the ratio now / then per round; the median ratio is the result.

    python -m benchmarks.side_by_side --ref 5a06660 --rounds 5        # the commit before the re-layering
    python -m benchmarks.side_by_side --ref 87040ef --only video      # .mp4 / .webm against .avi (issue 35)
    python -m benchmarks.side_by_side --ref 7c2ac58 --only video --suffixes .avi   # a commit before .webm
    python -m benchmarks.side_by_side --ref 45c1456 --only bulk --large_photos 64   # 12 M pixel photos too

The video cases also print each --save_output's time a frame against .avi's in the same tree and round (the
cost of the encoder, as the user sees it), median of the rounds.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .bench_bulk import make_crops, make_large_photos, make_photos
from .bench_video import DEFAULT_VIDEO, make_long_clip
from .common import REPO, busy_processes

PATTERNS = {"fps": re.compile(r"average ([\d.]+) FPS"), "images/s": re.compile(r"([\d.]+) images/s"),
            "s": re.compile(r"faces in ([\d.]+) s,")}


VIDEO_SUFFIXES = (".avi", ".mp4", ".webm")      # MJPG (OpenCV), H.264 and VP9 (PyAV, when installed)


def video_case(suffix: str) -> str:
    return f"video, default flags, --save_output {suffix}"


def cases(work: Path, frames: int, crops: int, photos: int, only: str = "all",
          suffixes: tuple = VIDEO_SUFFIXES, large_photos: int = 0) -> dict:
    """name -> (script, arguments, unit): the default video run writing each of `suffixes`; bulk crops and
    photos (and phone-size photos, timed in seconds: a few images a second rounds badly)."""
    todo = {}
    if only in ("all", "video"):
        clip = make_long_clip(DEFAULT_VIDEO, work / "clip.mp4", frames)
        for suffix in suffixes:
            todo[video_case(suffix)] = (
                "real_time_video.py", ["--video", clip, "--no_display", "--save_output", "{out}" + suffix], "fps")
    if only in ("all", "bulk"):
        crop_dir, photo_dir = make_crops(work / "crops", crops), make_photos(work / "photos", photos)
        todo[f"{crops} crops, --recursive --no_detect --output .jsonl"] = (
            "inference.py", [crop_dir, "--recursive", "--no_detect", "--output", "{out}.jsonl"], "images/s")
        todo[f"{photos} photos with detection, --output .jsonl"] = (
            "inference.py", [photo_dir, "--output", "{out}.jsonl"], "images/s")
        if large_photos:
            todo[f"{large_photos} photos of 4032x3024 with detection, --output .jsonl"] = (
                "inference.py", [make_large_photos(work / "large", large_photos), "--output", "{out}.jsonl"], "s")
    return todo


def vs_avi(figures: dict) -> list[str]:
    """Each video case's time a frame over .avi's (= FPS .avi / FPS case), per tree, median of the rounds."""
    avi = figures.get(video_case(".avi"))
    lines = []
    for suffix in VIDEO_SUFFIXES[1:]:
        case = figures.get(video_case(suffix))
        if avi is None or case is None:
            continue
        parts = []
        for label in ("now", "then"):
            ratios = [a / c for a, c in zip(avi[label], case[label])]
            parts.append(f"{label} {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
        lines.append(f"time a frame, --save_output {suffix} / .avi (median of rounds): " + ", ".join(parts))
    return lines


def run_case(tree: Path, script: str, args: list, unit: str, out: Path) -> float:
    argv = [sys.executable, str(tree / script), *(str(a).replace("{out}", str(out)) for a in args), "--overwrite"]
    r = subprocess.run(argv, cwd=out.parent, capture_output=True, text=True, timeout=1800)
    text = r.stdout + r.stderr
    match = PATTERNS[unit].search(text)
    if r.returncode != 0 or not match:
        raise SystemExit(f"{tree.name}: {script} failed ({r.returncode}): {text.strip()[-400:]}")
    return float(match.group(1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="the earlier commit (or branch) to compare with")
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds (default: 5)")
    parser.add_argument("--frames", type=int, default=600, help="video frames (the test clip looped; default: 600)")
    parser.add_argument("--crops", type=int, default=3000, help="48x48 crops for the bulk case (default: 3000)")
    parser.add_argument("--photos", type=int, default=200, help="640x480 photos for detection (default: 200)")
    parser.add_argument("--large_photos", type=int, default=0,
                        help="also this many 4032x3024 photos (a phone's), timed in seconds (default: 0)")
    parser.add_argument("--only", choices=["all", "video", "bulk"], default="all",
                        help="which cases (default: all)")
    parser.add_argument("--suffixes", nargs="+", choices=VIDEO_SUFFIXES, default=list(VIDEO_SUFFIXES),
                        help="the video cases' --save_output formats (an old commit may lack some; default: all)")
    args = parser.parse_args(argv)
    busy = busy_processes()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="fer-side-") as tmp:
        work = Path(tmp)
        then = work / "then"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(then), args.ref], check=True,
                       capture_output=True)
        try:
            todo = cases(work, args.frames, args.crops, args.photos, args.only, tuple(args.suffixes),
                         args.large_photos)
            figures = {name: {"now": [], "then": []} for name in todo}
            for k in range(args.rounds):
                for name, (script, case_args, unit) in todo.items():
                    order = [("now", REPO), ("then", then)][:: 1 if k % 2 == 0 else -1]
                    for label, tree in order:
                        figures[name][label].append(run_case(tree, script, case_args, unit, work / f"out_{label}"))
                print(f"round {k + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(then)], capture_output=True)
    print(f"now ({subprocess.run(['git', '-C', str(REPO), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()}) "
          f"against {args.ref}, {args.rounds} alternated rounds; load average at the start {load}"
          + (f"; UNDER LOAD (pids {', '.join(busy)})" if busy else ""))
    print(f"{'case':<48} {'now':>9} {'then':>9} {'speed now/then (median of rounds)':>34}")
    for name, (_, _, unit) in todo.items():
        now, then_ = figures[name]["now"], figures[name]["then"]
        ratios = [b / a if unit == "s" else a / b for a, b in zip(now, then_)]     # speed now / then
        print(f"{name:<48} {statistics.median(now):>9.1f} {statistics.median(then_):>9.1f} "
              f"{statistics.median(ratios):>17.3f} ({min(ratios):.3f}-{max(ratios):.3f})  {unit}")
    for line in vs_avi(figures):
        print(line)
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
