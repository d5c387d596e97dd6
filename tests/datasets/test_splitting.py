"""validation_split.py and fer_common.datasets.splitting on tiny synthetic folders."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

import validation_split  # noqa: E402
from fer_common.cli import FERError, run_main  # noqa: E402
from fer_common.labels import EMOTIONS  # noqa: E402
from fer_common.datasets.splitting import list_class_files, plan_split, split_dataset  # noqa: E402

# Lowercase (Kaggle) and canonical folder names mixed: both must work. 21 -> 2 val, 3 -> 1, 10 -> 1.
SIZES = {"angry": 21, "Disgust": 3, "fear": 10, "Happy": 12, "sad": 10, "surprise": 10, "Neutral": 10}


def make_train(root: Path, sizes=SIZES) -> Path:
    for folder, n in sizes.items():
        (root / "train" / folder).mkdir(parents=True)
        for i in range(n):
            (root / "train" / folder / f"img_{i:03d}.png").write_bytes(f"{folder} {i}".encode())
    return root


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def names(folder: Path) -> dict[str, set[str]]:
    return {c.name: {f.name for f in c.iterdir()} for c in folder.iterdir() if c.is_dir()}


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(validation_split.main, validation_split.get_args_parser(), argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_counts_per_class_canonical_names_and_source_unchanged(tmp_path):
    root = make_train(tmp_path / "dataset")
    before = snapshot(root / "train")
    counts = split_dataset(root)["counts"]
    assert counts["val_new"] == {"Angry": 2, "Disgust": 1, "Fear": 1, "Happy": 1, "Sad": 1, "Surprise": 1,
                                 "Neutral": 1}
    assert counts["train_new"] == {"Angry": 19, "Disgust": 2, "Fear": 9, "Happy": 11, "Sad": 9, "Surprise": 9,
                                   "Neutral": 9}
    assert snapshot(root / "train") == before
    train, val = names(root / "train_new"), names(root / "val_new")
    assert sorted(train) == sorted(val) == sorted(EMOTIONS)
    for emotion, folder in zip(EMOTIONS, ["angry", "Disgust", "fear", "Happy", "sad", "surprise", "Neutral"]):
        assert not train[emotion] & val[emotion]
        assert train[emotion] | val[emotion] == {f.name for f in (root / "train" / folder).iterdir()}
    assert not [p for p in root.iterdir() if p.name.startswith(".") and p.is_dir()]  # no temp folders left


def test_split_is_deterministic_for_a_seed(tmp_path):
    root = make_train(tmp_path / "dataset")
    files, _ = list_class_files(root / "train")
    shuffled = {c: list(reversed(p)) for c, p in files.items()}  # listing order must not matter
    assert plan_split(files, 0.3, seed=1) == plan_split(shuffled, 0.3, seed=1)
    assert plan_split(files, 0.3, seed=1) != plan_split(files, 0.3, seed=2)

    split_dataset(root, 0.3, seed=1)
    first = names(root / "val_new")
    split_dataset(root, 0.3, seed=1, force=True)
    assert names(root / "val_new") == first
    split_dataset(root, 0.3, seed=2, force=True)
    assert names(root / "val_new") != first


def test_no_overwrite_without_force(tmp_path, capsys):
    root = make_train(tmp_path / "dataset")
    assert run_cli(["--dataset_path", str(root)], capsys)[0] == 0
    (root / "val_new" / "Angry" / "mine.png").write_bytes(b"x")
    code, _, err = run_cli(["--dataset_path", str(root)], capsys)
    assert code == 1
    assert err.strip() == f"error: {root / 'train_new'} already exists; use --force to replace it"
    assert (root / "val_new" / "Angry" / "mine.png").exists()
    assert run_cli(["--dataset_path", str(root), "--force"], capsys)[0] == 0
    assert not (root / "val_new" / "Angry" / "mine.png").exists()


def test_non_image_files_are_skipped_and_counted(tmp_path, capsys):
    root = make_train(tmp_path / "dataset")
    (root / "train" / "angry" / "notes.txt").write_text("x")
    (root / "train" / "labels.csv").write_text("x")
    code, out, err = run_cli(["--dataset_path", str(root)], capsys)
    assert code == 0
    assert "skipped 2 non-image entries" in out
    assert "warning: skipping" in err and "notes.txt: not an image" in err
    assert not list(root.glob("*_new/*/notes.txt"))


def test_a_class_with_one_image_is_an_error_naming_it(tmp_path):
    root = make_train(tmp_path / "dataset", {**SIZES, "Disgust": 1})
    with pytest.raises(FERError, match="class Disgust has 1 image.s.; a split needs at least 2 per class"):
        split_dataset(root)
    assert not (root / "train_new").exists() and not (root / "val_new").exists()


def test_missing_train_says_to_download_first(tmp_path, capsys):
    code, _, err = run_cli(["--dataset_path", str(tmp_path / "nothing")], capsys)
    assert code == 1
    assert "train not found: run download_dataset.py first" in err


@pytest.mark.parametrize("argv, message", [(["--val_ratio", "1.5"], "argument --val_ratio: must be a finite number > 0 and < 1, got '1.5'"),
                                           (["--val_ratio", "0"], "argument --val_ratio: must be a finite number > 0"),
                                           (["--val_ratio", "nan"], "argument --val_ratio: must be a finite"),
                                           (["--seed", "-1"], "argument --seed: must be an integer from 0"),
                                           (["--seed", "1e3"], "argument --seed: must be an integer, got '1e3'"),
                                           (["--dataset_path", ""], "argument --dataset_path: must be a path")])
def test_bad_flag_values_are_one_line_naming_the_flag(tmp_path, capsys, argv, message):
    root = make_train(tmp_path / "dataset")
    code, _, err = run_cli(["--dataset_path", str(root)] + argv, capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_other_class_folders_are_classes_as_written(tmp_path):
    # FER+ and AffectNet add Contempt: a class of its own, kept as spelt; the 7 emotions still canonical.
    root = make_train(tmp_path / "dataset", {**SIZES, "contempt": 3})
    counts = split_dataset(root)["counts"]
    assert sorted(counts["train_new"]) == sorted(EMOTIONS + ["contempt"])
    assert (root / "val_new" / "contempt").is_dir() and (root / "train_new" / "Angry").is_dir()


def test_hardlink_mode(tmp_path):
    root = make_train(tmp_path / "dataset")
    split_dataset(root, mode="hardlink")
    linked = next((root / "val_new" / "Angry").iterdir())
    assert linked.stat().st_ino == (root / "train" / "angry" / linked.name).stat().st_ino


def test_symlink_mode_links_survive_moving_the_dataset(tmp_path):
    root = make_train(tmp_path / "dataset")
    split_dataset(root, mode="symlink")
    moved = root.rename(tmp_path / "moved")
    link = next((moved / "train_new" / "Fear").iterdir())
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.read_bytes() == (moved / "train" / "fear" / link.name).read_bytes()


def test_script_as_a_user_runs_it(tmp_path):
    root = make_train(tmp_path / "dataset")
    cmd = [sys.executable, "validation_split.py", "--dataset_path", str(root), "--val_ratio", "0.2", "--seed", "7"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-9].split() == ["class", "train_new", "val_new"]
    assert lines[-8].split() == ["Angry", "17", "4"]
    assert lines[-1].split() == ["total", str(sum(SIZES.values()) - 15), "15"]
