"""Run the model card's whole training campaign as one command: teachers, distillation, fine-tune, average,
calibrate, export, quantize, evaluate, and the ship rule against the shipped model.

    python recipes/campaign.py --dataset_path dataset --profile cpu                  # the model card's settings
    python recipes/campaign.py --dataset_path dataset --votes ferplus-votes.csv      # + the FER+ model
    python recipes/campaign.py --dataset_path dataset --profile tiny --out /tmp/c    # 1 epoch each: a smoke test

Each stage is one of the project's own commands (fine_tuning.py, `python -m fer_common average|calibrate|
export|quantize`, evaluate.py, benchmarks/robustness.py) with the flags of models/README.md's "Training"
section, run as a subprocess: the command is printed and logged to <out>/campaign.log, its output goes to
<out>/logs/<stage>.log too, and the first failing stage stops the campaign in one line. A stage whose outputs
exist is skipped, and a training stage with its X.last.pth continues with --resume: run the same command again
to go on. At the end a table gives each candidate's PublicTest accuracy (evaluate.py's metrics.json) and the
ship rule against the shipped model (robustness.py's verdict), also in <out>/summary.json.

Profiles: cpu = the model card's (batch 64, bf16 autocast, 2 threads); gpu = the same epochs with --device
cuda, batch 256 at twice the learning rate (square-root scaling; not yet measured against the card's runs),
8 loading processes and three wide teachers (seeds 5, 6, 7) trained with --augmentation broad, as the card's
"What the next step needs" asks; tiny = 1 epoch each, --widths 8,16,16,32, batch 8 (for the tests).

On the lent GPU machine (the data travels packed, in parts; the models come back as bring_back.tar.* chunks):

    python recipes/campaign.py --dataset_path dataset --pack runs/pack       # here, once
    python3 recipes/campaign.py --unpack /tmp/pack --dataset_path /tmp/dataset --profile gpu \\
        --out /tmp/campaign --time_limit 500 --bring_back $OUT                # there: see recipes/README.md
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):          # run as `python recipes/campaign.py`
    sys.path.insert(0, str(REPO))

from fer_common.cli import FERError, make_parser, path_arg, positive_float, run_main  # noqa: E402
from fer_common.files import write_json  # noqa: E402
from fer_common.train.args import last_checkpoint_path, metrics_path  # noqa: E402

from recipes.transfer import SPLITS, bring_back, pack, unpack  # noqa: E402

PY = sys.executable
SHIPPED = REPO / "models"


@dataclass(frozen=True)
class Profile:
    """How the model card's recipe is run on one kind of machine."""
    device: str
    batch_size: int
    lr_scale: float             # the model card's learning rates (batch 64) times this
    num_workers: int
    amp: str
    threads: str | None         # OMP_NUM_THREADS for the commands (None: the machine's default)
    epochs: int | None          # None: the model card's epochs; else every training stage's
    widths: str | None          # the student's --widths (None: the shipped size)
    wide_widths: str            # the wide teachers' --widths
    wide_seeds: tuple
    wide_augmentation: str
    min_images: int | None = None   # fer calibrate --min_images (a tiny data set has under 200 faces)


PROFILES = {
    "gpu": Profile("cuda", 256, 2.0, 8, "bf16", None, None, None, "64,128,256,512", (5, 6, 7), "broad"),
    "cpu": Profile("cpu", 64, 1.0, 2, "bf16", "2", None, None, "64,128,256,512", (5,), "standard"),
    "tiny": Profile("cpu", 8, 1.0, 0, "off", "1", 1, "8,16,16,32", "16,32,32,64", (5,), "standard", min_images=1),
}


@dataclass
class Stage:
    """One command and the files that show it has run. A training stage also names its X.last.pth."""
    name: str
    cmd: list
    outputs: list
    last: Path | None = None


@dataclass
class Candidate:
    """A model the summary scores: its file, whether it is scored against FER+ votes, and its ship-rule run."""
    name: str
    file: Path
    ferplus: bool = False
    ship_rule: bool = True      # compared with the shipped model under perturbations (teachers are not)


@dataclass
class Plan:
    stages: list = field(default_factory=list)
    candidates: list = field(default_factory=list)
    bring_back: list = field(default_factory=list)      # models worth bringing back, most wanted first


def build_plan(args) -> Plan:
    """Every stage of the campaign, in order, with the model card's flags under the chosen profile."""
    p, out, data = PROFILES[args.profile], Path(args.out), Path(args.dataset_path)
    val, test = data / "val_new", data / "test"
    plan = Plan()
    pth = lambda name: out / f"{name}.pth"      # noqa: E731

    def train(name, epochs, patience, lr, seed, *flags, widths=p.widths):
        model, onnx = pth(name), out / f"{name}.onnx"
        cmd = [PY, "fine_tuning.py", "--dataset_path", data, "--epochs", p.epochs or epochs,
               "--batch_size", p.batch_size, "--learning_rate", f"{lr * p.lr_scale:g}", "--weight_decay", "0.05",
               "--scheduler", "cosine", "--patience", patience, "--amp", p.amp, "--seed", seed,
               "--device", p.device, "--num_workers", p.num_workers, *flags,
               *(["--widths", widths] if widths else []), "--output_model", model, "--output_onnx", onnx]
        plan.stages.append(Stage(name, cmd, [model, onnx], last_checkpoint_path(model)))

    def distil(teachers, weight):
        return [*(x for t in teachers for x in ("--teacher", pth(t))), "--distill_weight", weight,
                "--distill_temperature", "4"]

    def fer(name, *cmd_args, outputs):
        plan.stages.append(Stage(name, [PY, "-m", "fer_common", *cmd_args], outputs))

    # The model card's names: generation 0 (the model shipped first), born-again generations 1 and 2.
    train("teacher_shipped_v1", 35, 8, 0.002, 42, "--ema_decay", "0")
    train("student_ba_s2", 60, 15, 0.002, 2, "--ema_decay", "0.999", *distil(["teacher_shipped_v1"], 0.5))
    train("student_g2_s3", 70, 20, 0.002, 3, "--ema_decay", "0.999", *distil(["student_ba_s2"], 0.7))
    broad = "_broad" if p.wide_augmentation == "broad" else ""
    wide = [f"teacher_wide{broad}_s{seed}" for seed in p.wide_seeds]
    for name, seed in zip(wide, p.wide_seeds):
        train(name, 50, 12, 0.002, seed, "--ema_decay", "0.999", "--augmentation", p.wide_augmentation,
              widths=p.wide_widths)
    train("ft_g2_broad_s8", 6, 6, 0.0003, 8, "--ema_decay", "0.999", "--init_from", pth("student_g2_s3"),
          "--augmentation", "broad", *distil(["student_g2_s3", *wide], 0.7), "--teacher_tta")

    # The shipped recipe: 0.7 generation 2 + 0.3 its broad fine-tune, calibrated, exported, quantized.
    soup, model = pth("soup_g2_broad"), pth("fer_model")
    onnx, int8 = out / "fer_model.onnx", out / "fer_model.int8.onnx"
    fer("soup_g2_broad", "average", pth("student_g2_s3"), pth("ft_g2_broad_s8"), "--weights", "0.7", "0.3",
        "--output", soup, outputs=[soup])
    fer("calibrate", "calibrate", soup, "--data", val, "--output", model,
        *(["--min_images", p.min_images] if p.min_images else []), outputs=[model])
    fer("export", "export", model, onnx, outputs=[onnx])
    fer("quantize", "quantize", onnx, int8, "--calibration", val, outputs=[int8])

    names = ["teacher_shipped_v1", "student_ba_s2", "student_g2_s3", *wide, "ft_g2_broad_s8"]
    plan.candidates = [*(Candidate(n, pth(n), ship_rule=n not in wide) for n in names),
                       Candidate("fer_model", model), Candidate("fer_model.int8", int8)]
    plan.bring_back = [int8, model, soup]
    if args.votes:      # the FER+ model's recipe, started from this campaign's default model
        fp, fp_int8 = pth("ferplus_model"), out / "ferplus_model.int8.onnx"
        train("ferplus_model", 45, 10, 5e-4, 11, "--votes", args.votes, "--vote_mode", "crossentropy",
              "--init_from", model, "--ema_decay", "0.999")
        fer("quantize_ferplus", "quantize", out / "ferplus_model.onnx", fp_int8, "--calibration", val,
            outputs=[fp_int8])
        plan.candidates += [Candidate("ferplus_model", fp, True), Candidate("ferplus_model.int8", fp_int8, True)]
        plan.bring_back += [fp_int8, fp]
    plan.bring_back += [pth(n) for n in reversed(names)]

    for c in plan.candidates:
        folder = out / "eval" / c.name
        plan.stages.append(Stage(f"evaluate_{c.name}", [
            PY, "evaluate.py", "--checkpoint", c.file, "--data", test, "--device", p.device, "--output_dir", folder,
            *(["--votes", args.votes] if c.ferplus else [])], [folder / "metrics.json"]))
    for ferplus in (False, True) if args.votes else (False,):
        name = "robustness_ferplus" if ferplus else "robustness"
        shipped = SHIPPED / ("ferplus_model.int8.onnx" if ferplus else "fer_model.int8.onnx")
        models = [f"{c.name}={c.file}" for c in plan.candidates if c.ship_rule and c.ferplus == ferplus]
        plan.stages.append(Stage(name, [
            PY, "benchmarks/robustness.py", "--data", test, "--device", p.device, "--model", f"shipped={shipped}",
            *(x for m in models for x in ("--model", m)), *(["--votes", args.votes] if ferplus else []),
            "--output", out / f"{name}.md", out / f"{name}.json"], [out / f"{name}.json"]))
    for stage in plan.stages:
        stage.cmd = [str(x) for x in stage.cmd]
    return plan


def is_done(stage: Stage) -> bool:
    """Its outputs are there; or, for a training stage, its best model and history without a training state
    beside them: a finished model carried in from another machine without its .onnx, which no stage reads."""
    if all(p.exists() for p in stage.outputs):
        return True
    model = stage.outputs[0]
    return stage.last is not None and model.exists() and metrics_path(model).exists() and not stage.last.exists()


def finished_models(plan: Plan) -> list:
    """plan.bring_back less the best-so-far checkpoints of unfinished training stages: brought back without
    its training state, one would count as finished (is_done) on the next machine."""
    unfinished = {s.outputs[0] for s in plan.stages if s.last is not None and not all(p.exists() for p in s.outputs)}
    return [m for m in plan.bring_back if m not in unfinished]


class Runner:
    """Runs stages in order: prints and logs each command, tees its output, and keeps each stage's outcome."""

    def __init__(self, out: Path, threads: str | None, deadline: float | None):
        self.out, self.deadline, self.status = out, deadline, {}
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if threads:
            self.env.setdefault("OMP_NUM_THREADS", threads)     # the model card's thread counts, unless set

    def log(self, line: str) -> None:
        print(line, flush=True)
        with open(self.out / "campaign.log", "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}\n")

    def run(self, stage: Stage) -> bool:
        """Run one stage; False when the time limit stopped it (run again to continue). A failure raises."""
        if is_done(stage):
            self.log(f"skip {stage.name}: {stage.outputs[0]} exists")
            self.status[stage.name] = {"status": "skipped"}
            return True
        cmd = list(stage.cmd)
        if stage.last is not None and stage.last.exists():
            cmd += ["--resume", str(stage.last)]
        elif stage.last is not None and any(p.exists() for p in stage.outputs):
            cmd += ["--overwrite"]      # stopped before its first training state: start it afresh
        left = None if self.deadline is None else self.deadline - time.monotonic()
        if left is not None and left <= 0:
            return self.stop(stage, "before it started")
        self.log(f"$ {shlex.join(cmd)}")
        t0, log_path = time.monotonic(), self.out / "logs" / f"{stage.name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            pump = threading.Thread(target=tee, args=(proc.stdout, log), daemon=True)
            pump.start()
            try:
                code = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)         # as Ctrl-C: its last finished epoch is in X.last.pth
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                code = None
            pump.join()
        seconds = round(time.monotonic() - t0, 1)
        if code is None:
            return self.stop(stage, f"after {seconds:.0f} s", seconds)
        if code != 0:
            self.status[stage.name] = {"status": "failed", "seconds": seconds}
            raise FERError(f"stage {stage.name} failed (exit {code}) after {seconds:.0f} s; its output: {log_path}")
        self.status[stage.name] = {"status": "ran", "seconds": seconds}
        self.log(f"done {stage.name} in {seconds:.0f} s")
        return True

    def stop(self, stage: Stage, when: str, seconds: float = 0.0) -> bool:
        self.status[stage.name] = {"status": "stopped", "seconds": seconds}
        self.log(f"time limit: stopped at stage {stage.name} {when}; run the same command again to continue")
        return False


def tee(stream, log) -> None:
    """Copy a child's output to our stdout and to its log file as it comes."""
    for chunk in iter(lambda: stream.read1(65536), b""):
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        log.write(chunk)
        log.flush()


def read_json(path: Path):
    """A JSON file's content, or None when it is missing or unreadable (a stage that has not run)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def summarise(plan: Plan, args, status: dict, complete: bool) -> dict:
    """Each candidate's accuracy and ship-rule verdict from the files the stages wrote (whatever exists)."""
    verdicts = []
    for name in ("robustness", "robustness_ferplus"):
        verdicts += (read_json(Path(args.out) / f"{name}.json") or {}).get("ship_rule", [])
    rows = []
    for c in plan.candidates:
        metrics = read_json(Path(args.out) / "eval" / c.name / "metrics.json") or {}
        verdict = next((v for v in verdicts if v.startswith(f"{c.name} vs ")), None)
        passes = None if verdict is None else ("passes" if "passes the ship rule" in verdict else "fails")
        rows.append({"name": c.name, "file": str(c.file), "labels": "FER+ majority" if c.ferplus else "FER-2013",
                     "accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1"),
                     "ship_rule": passes, "verdict": verdict})
    return {"profile": args.profile, "dataset": str(args.dataset_path), "votes": args.votes, "complete": complete,
            "stages": {s.name: status.get(s.name, {"status": "not run"}) for s in plan.stages}, "candidates": rows}


def print_summary(summary: dict) -> None:
    pct = lambda x: "-" if x is None else f"{x * 100:.2f}%"     # noqa: E731
    print(f"\n{'candidate':<24} {'labels':<14} {'PublicTest':>10} {'macro F1':>9}  ship rule vs shipped")
    for r in summary["candidates"]:
        print(f"{r['name']:<24} {r['labels']:<14} {pct(r['accuracy']):>10} {pct(r['macro_f1']):>9}  "
              f"{r['ship_rule'] or '-'}")
    for r in summary["candidates"]:
        if r["verdict"]:
            print(r["verdict"])


def get_args_parser():
    parser = make_parser(__doc__)
    g = parser.add_argument_group("Data")
    g.add_argument("--dataset_path", default="dataset", type=path_arg,
                   help="folder holding train_new/, val_new/ (validation_split.py) and test/ (PublicTest)")
    g.add_argument("--votes", metavar="FILE", type=path_arg,
                   help="ferplus-votes.csv: also train, evaluate and check the FER+ model")
    g = parser.add_argument_group("Campaign")
    g.add_argument("--profile", choices=sorted(PROFILES), default="cpu",
                   help="gpu: the card's epochs on CUDA, bigger batches, three broad wide teachers; cpu: the model "
                        "card's settings; tiny: 1 epoch of small models (tests)")
    g.add_argument("--out", default="runs/campaign", type=path_arg, help="run folder: every model, log and result")
    g.add_argument("--time_limit", type=positive_float, metavar="SECONDS",
                   help="stop (a training stage as with Ctrl-C) after this long; the next run continues")
    g = parser.add_argument_group("Moving to and from the lent GPU machine (recipes/README.md)")
    g.add_argument("--pack", metavar="DIR", type=path_arg,
                   help="only pack --dataset_path's train_new, val_new and test into DIR/part-I-of-N.tar.gz")
    g.add_argument("--part_mib", type=positive_float, default=24.0,
                   help="--pack: largest part, in MiB (a call carries 64 MiB, the repository included)")
    g.add_argument("--unpack", metavar="DIR", type=path_arg,
                   help="first extract DIR/part-*.tar.gz into --dataset_path, then run the campaign")
    g.add_argument("--bring_back", metavar="DIR", type=path_arg,
                   help="at the end (also after a failure or the time limit) put the results in DIR as "
                        "bring_back.tar.* chunks that the device tool returns (for $OUT)")
    return parser


def main(args):
    # The limit counts from the start, unpacking included: on the device it has to end inside the call's timeout.
    deadline = None if args.time_limit is None else time.monotonic() + args.time_limit
    data, out = Path(args.dataset_path).resolve(), Path(args.out).resolve()
    if args.pack:
        if args.unpack:
            raise FERError("--pack and --unpack are two ends of one transfer: give one")
        pack(data, Path(args.pack), args.part_mib)
        return
    if args.unpack:
        unpack(Path(args.unpack), data)
    missing = [split for split in SPLITS if not (data / split).is_dir()]
    if missing:
        raise FERError(f"{data} has no {', '.join(missing)}: download_dataset.py and validation_split.py make them")
    if args.votes and not Path(args.votes).is_file():
        raise FERError(f"votes file not found: {args.votes}")
    args.dataset_path, args.out = data, out
    args.votes = args.votes and str(Path(args.votes).resolve())
    plan = build_plan(args)
    runner = Runner(out, PROFILES[args.profile].threads, deadline)
    runner.log(f"campaign: profile {args.profile}, data {data}, out {out}, {len(plan.stages)} stages")
    complete = False
    try:
        complete = all(runner.run(stage) for stage in plan.stages)
    finally:
        summary = summarise(plan, args, runner.status, complete)
        write_json(out / "summary.json", summary)
        print_summary(summary)
        print(f"ship rule: against {SHIPPED / 'fer_model.int8.onnx'} (FER+ candidates: ferplus_model.int8.onnx), "
              f"on {data / 'test'}")
        runner.log(f"summary -> {out / 'summary.json'}" + ("" if complete else " (campaign not finished)"))
        if args.bring_back:
            bring_back(out, finished_models(plan), Path(args.bring_back))


if __name__ == "__main__":
    run_main(main, get_args_parser())
