"""Issue 13: class folders define the classes (any names, any number from 2), FER-2013's spellings still canonical."""

import json

import cv2
import numpy as np
import pytest
import torch

import fine_tuning
import validation_split
from fer_common.train import loop as training
from fer_common.model.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from fer_common.cli import FERError, run_main
from fer_common.datasets.folders import find_classes, list_samples
from fer_common.labels import count_table
from fer_common.labels import EMOTIONS, class_name, order_names
from fer_common.metrics import classification_report, confusion_matrix, draw_confusion_matrix, format_report
from fer_common.model.networks import FERNet, default_preprocessing
from fer_common.infer.overlay import EMOTION_COLOURS, Overlay, emotion_colour
from fer_common.datasets.splitting import split_dataset
from helpers_models import save_advanced
from synthetic import make_folder_dataset, run_script

THREE = ["negative", "neutral", "positive"]
THREE_NAMES = ["Neutral", "negative", "positive"]      # `neutral/` is FER-2013's Neutral; sorted as ImageFolder does
TINY_NET = ["--widths", "8,16,16,32", "--epochs", "2", "--batch_size", "8", "--num_workers", "0"]
WIDTHS = (8, 16, 16, 32)


def one_error(code, err) -> str:
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def run_cli(module, argv, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(module.main, module.get_args_parser(), [str(a) for a in argv])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def save_seven(path, widths=WIDTHS, names=EMOTIONS) -> FERNet:
    """A 7-class model as the shipped one is (FER-2013 order), small."""
    torch.manual_seed(1)
    model = FERNet(num_classes=len(names), widths=widths).eval()
    save_checkpoint(make_checkpoint(model, "default", {"widths": list(widths)}, names,
                                    default_preprocessing("default")), path)
    return model


@pytest.fixture(scope="module")
def three_raw(tmp_path_factory):
    """A user's 3-class data set before the split: dataset/train/{negative,neutral,positive}/."""
    return make_folder_dataset(tmp_path_factory.mktemp("three"), per_class=(12,), splits=("train",), classes=THREE)


# ---------------------------------------------------------------- names

def test_fer2013_spellings_are_canonical_other_names_kept_as_written(tmp_path):
    assert [class_name(n) for n in ("angry", "ANGRY", "Angry", "neutral", "contempt", "positive", "A")] == \
        ["Angry", "Angry", "Angry", "Neutral", "contempt", "positive", "A"]
    data = make_folder_dataset(tmp_path, per_class=(1,), splits=("train",), class_folder=str.lower)
    names, folders = find_classes(data / "train")
    assert names == sorted(EMOTIONS) and [f.name for f in folders] == [n.lower() for n in names]
    (tmp_path / "train" / "Contempt").mkdir()
    cv2.imwrite(str(tmp_path / "train" / "Contempt" / "c.png"), np.zeros((48, 48), np.uint8))
    assert find_classes(data / "train")[0] == sorted(EMOTIONS + ["Contempt"])
    assert order_names(["b", "Neutral", "a", "Angry"]) == ["Angry", "Neutral", "a", "b"]


def test_two_spellings_of_one_emotion_are_an_error(tmp_path):
    make_folder_dataset(tmp_path, per_class=(1,), splits=("train",), classes=["angry", "Angry", "Happy"])
    with pytest.raises(FERError, match="are both the class Angry"):
        find_classes(tmp_path / "train")


def test_one_class_is_an_error_everywhere(tmp_path, capsys):
    make_folder_dataset(tmp_path, per_class=(6, 2, 6), splits=("train_new", "val_new", "train"), classes=["only"])
    with pytest.raises(FERError, match="at least 2 classes; found only only/"):
        find_classes(tmp_path / "train_new")
    line = one_error(*run_cli(fine_tuning, ["--dataset_path", tmp_path, *TINY_NET, "--output_model", tmp_path / "m.pth",
                                            "--output_onnx", tmp_path / "m.onnx"], capsys)[::2])
    assert "at least 2 classes" in line and not (tmp_path / "m.pth").exists()
    line = one_error(*run_cli(validation_split, ["--dataset_path", tmp_path, "--force"], capsys)[::2])
    assert "found only only/" in line and "at least 2 classes" in line      # the one class-folder walk


def test_empty_class_folder_is_still_an_error(tmp_path):
    make_folder_dataset(tmp_path, per_class=(2,), splits=("train_new",), classes=["A", "B"])
    (tmp_path / "train_new" / "C").mkdir()
    with pytest.raises(FERError, match="C has no images"):
        find_classes(tmp_path / "train_new")


# ---------------------------------------------------------------- consumers of class_names

def test_count_table_lists_any_classes():
    table = count_table({"train_new": {"positive": 9, "Neutral": 8, "a_rather_long_name": 1},
                         "val_new": {"positive": 1, "Neutral": 1}}).splitlines()
    assert [line.split()[0] for line in table] == ["class", "Neutral", "a_rather_long_name", "positive", "total"]
    assert table[2].split() == ["a_rather_long_name", "1", "0"] and table[-1].split() == ["total", "18", "2"]


def test_unknown_class_names_get_stable_distinct_colours():
    names = ["positive", "negative", "Contempt", "A", "B", "C"]
    colours = [emotion_colour(n) for n in names]
    assert colours == [emotion_colour(n) for n in names]              # stable (no hash() salt)
    assert len(set(colours)) == len(names) and all(max(c) >= 150 for c in colours)
    assert emotion_colour("Happy") == EMOTION_COLOURS["Happy"]
    frame = np.zeros((240, 320, 3), np.uint8)
    Overlay(THREE_NAMES).draw(frame, [[100, 80, 60, 60]], [[0.2, 0.5, 0.3]])
    assert frame.any()


def test_confusion_matrix_and_report_for_three_long_names(tmp_path):
    names = ["negative_mood", "Neutral", "very_positive_mood"]
    cm = confusion_matrix([0, 1, 2, 2], [0, 1, 2, 0], 3)
    report = classification_report(cm, names)
    assert list(report["per_class"]) == names and report["accuracy"] == pytest.approx(0.75)
    assert all(line.split()[0] in names for line in format_report(report).splitlines()[3:])
    draw_confusion_matrix(cm, names, tmp_path / "cm.png", title="three")
    assert cv2.imread(str(tmp_path / "cm.png")).shape[1] > 3 * 72


# ---------------------------------------------------------------- a 3-class run as a user types it

def test_three_class_run_end_to_end(three_raw, tmp_path):
    r = run_script("validation_split.py", "--dataset_path", three_raw, "--val_ratio", "0.25", "--force")
    assert r.returncode == 0, r.stderr
    assert [line.split()[0] for line in r.stdout.splitlines()[-4:]] == THREE_NAMES + ["total"]
    assert sorted(p.name for p in (three_raw / "val_new").iterdir() if p.is_dir()) == THREE_NAMES

    # Fine-tuned from a 7-class model (as the shipped one is): a new run, its own files, a 3-class head.
    save_seven(tmp_path / "seven.pth")
    model, onnx = tmp_path / "mine.pth", tmp_path / "mine.onnx"
    r = run_script("fine_tuning.py", "--dataset_path", three_raw, *TINY_NET, "--init_from", tmp_path / "seven.pth",
                   "--output_model", model, "--output_onnx", onnx)
    assert r.returncode == 0, r.stderr
    assert "in 3 classes (Neutral, negative, positive)" in r.stdout
    assert r.stdout.count("init_from ") == 1 and "classifier head re-initialised for 3 classes (was 7)" in r.stdout
    assert "epoch   1/2" in r.stdout and "resuming" not in r.stdout
    ckpt = load_checkpoint(model, expected_type="default")
    assert ckpt["class_names"] == THREE_NAMES and ckpt["state_dict"]["classifier.1.weight"].shape[0] == 3
    assert ckpt["model_config"]["widths"] == list(WIDTHS) and (tmp_path / "mine_metrics.json").is_file()

    image = next((three_raw / "val_new" / "positive").iterdir())
    r = run_script("inference.py", image, "--no_detect", "--checkpoint", model, "--json")
    assert r.returncode == 0, r.stderr
    face = json.loads(r.stdout)[0]["faces"][0]
    assert list(face["probabilities"]) == THREE_NAMES and face["top_emotion"] in THREE_NAMES
    assert sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-4)

    out = tmp_path / "eval"
    r = run_script("evaluate.py", "--data", three_raw / "val_new", "--checkpoint", onnx, "--output_dir", out)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"] == THREE_NAMES and list(metrics["per_class"]) == THREE_NAMES
    assert np.array(metrics["confusion_matrix"]).shape == (3, 3) and metrics["images"] == 3 * 3


# ---------------------------------------------------------------- --init_from

def test_init_from_keeps_features_and_replaces_the_head(tmp_path):
    seven = save_seven(tmp_path / "seven.pth")
    model = FERNet(num_classes=3, widths=WIDTHS)
    before_head = model.state_dict()["classifier.1.weight"].clone()
    lines = []
    prep = training.init_from_checkpoint(model, tmp_path / "seven.pth", "default", {"widths": list(WIDTHS)},
                                         THREE_NAMES, log=lines.append)
    old, new = seven.state_dict(), model.state_dict()
    for key in ("features.0.0.weight", "features.6.0.weight", "features.0.1.running_mean", "embedding.1.weight"):
        assert torch.equal(old[key], new[key]), key
    assert new["classifier.1.weight"].shape == (3, 128)
    neutral = EMOTIONS.index("Neutral")             # the class both know keeps its row; the others start afresh
    assert torch.equal(new["classifier.1.weight"][0], old["classifier.1.weight"][neutral])
    assert torch.equal(new["classifier.1.bias"][0], old["classifier.1.bias"][neutral])
    assert torch.equal(new["classifier.1.weight"][1:], before_head[1:])
    assert prep == default_preprocessing("default")
    assert len(lines) == 1 and "re-initialised for 3 classes (was 7)" in lines[0] and "rows of Neutral" in lines[0]

    # The same classes in another order: every row kept, reordered.
    same = FERNet(num_classes=7, widths=WIDTHS)
    training.init_from_checkpoint(same, tmp_path / "seven.pth", "default", {}, sorted(EMOTIONS), log=lines.append)
    order = [EMOTIONS.index(n) for n in sorted(EMOTIONS)]
    assert torch.equal(same.state_dict()["classifier.1.weight"], old["classifier.1.weight"][order])
    assert "rows put in the data's class order" in lines[-1]


def test_init_from_of_another_type_or_size_is_one_error_line(three_raw, tmp_path, capsys):
    if not (three_raw / "train_new").is_dir():
        split_dataset(three_raw, 0.25)
    save_seven(tmp_path / "wide.pth", widths=(40, 80, 160, 320))
    save_advanced(tmp_path / "adv.pth")
    common = ["--dataset_path", three_raw, *TINY_NET, "--output_model", tmp_path / "m.pth",
              "--output_onnx", tmp_path / "m.onnx"]
    line = one_error(*run_cli(fine_tuning, common + ["--init_from", tmp_path / "wide.pth"], capsys)[::2])
    assert "--init_from" in line and "do not fit" in line and "widths [40, 80, 160, 320] (this run: [8, 16, 16, 32])" in line
    line = one_error(*run_cli(fine_tuning, common + ["--init_from", tmp_path / "adv.pth"], capsys)[::2])
    assert "holds a 'advanced' model, not 'default'" in line
    line = one_error(*run_cli(fine_tuning, common + ["--init_from", tmp_path / "wide.pth",
                                                     "--resume", tmp_path / "wide.pth"], capsys)[::2])
    assert "give one of them" in line
    assert not (tmp_path / "m.pth").exists() and not (tmp_path / "m.onnx").exists()


def test_val_split_with_other_classes_than_training_names_them(tmp_path):
    make_folder_dataset(tmp_path, per_class=(2, 1), classes=["A", "B", "C"])
    (tmp_path / "val_new" / "D").mkdir()
    cv2.imwrite(str(tmp_path / "val_new" / "D" / "d.png"), np.zeros((48, 48), np.uint8))
    with pytest.raises(FERError, match="not in training: D"):
        list_samples(tmp_path / "val_new", ["A", "B", "C"])
