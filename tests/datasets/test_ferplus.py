"""FER+ votes (fer_common.datasets.ferplus): FER+'s rules, both votes files, matching after a validation split, the
fer2013.csv + fer2013new.csv import, training on votes as a user types it, and scoring against FER+ majority."""

import csv
import json
import re

import cv2
import numpy as np
import pytest
import torch

from fer_common.datasets import ferplus
from fer_common.model.checkpoint import load_checkpoint
from fer_common.cli import run_main
from fer_common.train.loaders import MemoryLoader, TargetLoader
from fer_common.errors import FERError
from fer_common.labels import EMOTIONS
from fer_common.train.data import class_weights
from synthetic import REPO, pattern, run_script

COLUMNS = ferplus.VOTE_COLUMNS
HEADER = ["file", *COLUMNS]


def votes(**counts) -> list[float]:
    """Ten votes from column names: votes(happiness=8, sadness=2); NF is `NF`."""
    return [float(counts.get(c, 0)) for c in COLUMNS]


def index(name: str) -> int:
    return ferplus.CLASS_NAMES.index(name)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def one_error_line(capsys, main, parser, argv) -> str:
    with pytest.raises(SystemExit) as e:
        run_main(main, parser, [str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "/s]" not in line]   # not tqdm's
    assert e.value.code == 1 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ---------------------------------------------------------------- FER+'s rules

def test_classes_are_fer2013s_seven_and_contempt_sorted():
    assert ferplus.CLASS_NAMES == sorted(EMOTIONS + ["Contempt"])
    assert ferplus.CLASS_NAMES[:3] == ["Angry", "Contempt", "Disgust"]


@pytest.mark.parametrize("counts, label", [
    (dict(happiness=8, sadness=2), "Happy"),
    (dict(neutral=6, anger=4), "Neutral"),
    (dict(contempt=6, neutral=3, NF=1), "Contempt"),
    # single votes are set to 0 first: 4 of the 4 votes left is a majority
    (dict(fear=4, neutral=1, happiness=1, surprise=1, sadness=1, anger=1, disgust=1), "Fear"),
    (dict(happiness=4, surprise=4, sadness=2), None),        # a tie: no majority
    (dict(happiness=5, sadness=5), None),                    # half is not more than half
    (dict(happiness=5, sadness=3, fear=2), None),
    (dict(unknown=6, happiness=4), None),                    # the majority is unknown
    (dict(NF=10), None),                                     # not a face
    (dict(neutral=1, happiness=1, surprise=1, sadness=1, anger=1, disgust=1, fear=1, contempt=1, unknown=1, NF=1), None),
])
def test_majority_rule(counts, label):
    assert ferplus.majority_labels(np.array([votes(**counts)]))[0] == (-1 if label is None else index(label))


def test_distribution_keeps_the_top_emotions_and_drops_single_votes():
    dist = ferplus.vote_distribution(votes(happiness=6, surprise=3, sadness=1))
    assert dist[index("Happy")] == pytest.approx(6 / 9) and dist[index("Surprise")] == pytest.approx(3 / 9)
    assert dist.sum() == pytest.approx(1) and dist[index("Sad")] == 0
    # once the top emotions hold 3/4 of the votes, the rest is left out
    assert ferplus.vote_distribution(votes(happiness=8, sadness=2))[index("Happy")] == 1
    # ties go in together, and at most three emotions may make up the distribution
    dist = ferplus.vote_distribution(votes(neutral=4, sadness=4, anger=2))
    assert dist[index("Neutral")] == dist[index("Sad")] == pytest.approx(0.5)
    assert ferplus.vote_distribution(votes(neutral=2, sadness=2, anger=2, fear=2, disgust=2)) is None
    # an image FER+'s majority rule leaves out may still have a distribution
    assert ferplus.majority_labels(np.array([votes(happiness=4, surprise=4, sadness=2)]))[0] == -1
    assert ferplus.vote_distribution(votes(happiness=4, surprise=4, sadness=2)) is not None


@pytest.mark.parametrize("counts", [dict(unknown=6, happiness=4), dict(NF=10), dict(unknown=5, NF=5),
                                    # unknown ties with the second emotion: only 5 of 10 votes are kept
                                    dict(happiness=5, unknown=3, sadness=2), dict()])
def test_distribution_leaves_out_unknown_and_not_a_face(counts):
    assert ferplus.vote_distribution(votes(**counts)) is None


def test_modes_give_targets_over_the_eight_classes():
    rows = np.array([votes(happiness=6, sadness=4), votes(happiness=4, surprise=4, sadness=2), votes(NF=10)])
    targets, kept = ferplus.vote_targets(rows, "majority")
    assert kept.tolist() == [True, False, False] and targets[0].argmax() == index("Happy") and targets[0].sum() == 1
    for mode in ("probability", "crossentropy"):
        targets, kept = ferplus.vote_targets(rows, mode)
        assert kept.tolist() == [True, True, False] and targets.shape == (3, 8)
        assert targets[0, index("Happy")] == pytest.approx(0.6) and targets[1, index("Surprise")] == pytest.approx(0.5)


# ---------------------------------------------------------------- votes files

def test_votes_file_by_image_path_and_by_fer2013_row(tmp_path):
    by_path = write_csv(tmp_path / "votes.csv", [*HEADER, "rmse"],
                        [["train/happy/Training_1.jpg", *votes(happiness=10), "1.2"],
                         ["test/sad/PublicTest_2.jpg", *votes(sadness=7, neutral=3), "0.9"]])
    table = ferplus.read_votes(by_path)
    assert table.keys == ["train/happy/Training_1.jpg", "test/sad/PublicTest_2.jpg"] and not table.by_row
    assert table.votes.shape == (2, 10) and table.votes[1, COLUMNS.index("sadness")] == 7

    new = write_csv(tmp_path / "fer2013new.csv", ["Usage", "Image name", *COLUMNS],
                    [["Training", "fer0000000.png", *votes(happiness=10)], ["Training", "", *votes(NF=10)],
                     ["PublicTest", "fer0000002.png", *votes(anger=9, NF=1)]])
    table = ferplus.read_votes(new)
    # row i of fer2013new.csv is the image the fer2013.csv import names <Usage>_<i>.png
    assert table.by_row and table.keys == ["Training_00001.png", "Training_00002.png", "PublicTest_00003.png"]


@pytest.mark.parametrize("header, rows, message", [
    (["file", "neutral", "happiness"], [], "is not a FER+ votes file"),
    (HEADER, [["a.jpg", *votes(happiness=10)[:-1], "x"]], "NF is 'x', not a number of votes"),
    (HEADER, [["a.jpg", "-1", *votes()[1:]]], "neutral is '-1'"),
    (HEADER, [["a.jpg", *votes(happiness=10)], ["a.jpg", *votes(sadness=10)]], "line 3 repeats a.jpg (first on line 2)"),
    (HEADER, [["a.jpg", "3"]], "line 2: 2 columns"),
    (HEADER, [], "holds no votes"),
    (["Usage", "Image name", *COLUMNS], [["Validation", "x.png", *votes(happiness=10)]], "Usage 'Validation'"),
])
def test_malformed_votes_file_is_one_error(tmp_path, header, rows, message):
    with pytest.raises(FERError, match=re.escape(message)):
        ferplus.read_votes(write_csv(tmp_path / "votes.csv", header, rows))


def test_keys_match_by_file_name_after_a_split_and_ties_are_settled_by_folders(tmp_path):
    table = ferplus.VoteTable(tmp_path, ["train/happy/Training_1.jpg", "train/happy/same.jpg", "test/happy/same.jpg"],
                              np.array([votes(happiness=10)] * 3, dtype=np.float32))
    rows = table.match([tmp_path / "dataset/val_new/Happy/Training_1.jpg",     # moved by validation_split.py
                        tmp_path / "dataset/test/Happy/same.jpg",               # test/happy/ fits best
                        tmp_path / "dataset/val_new/Happy/same.jpg",            # both fit as well: none
                        tmp_path / "dataset/train_new/Happy/other.jpg"])
    assert rows.tolist() == [0, 2, -1, -1]
    # FER-2013 has a few names in two class folders: the votes go to the face whose folders fit, not to both
    table = ferplus.VoteTable(tmp_path, ["train/surprise/dup.jpg"], np.array([votes(surprise=10)], dtype=np.float32))
    rows = table.match([tmp_path / "dataset/train_new/Neutral/dup.jpg", tmp_path / "dataset/val_new/Surprise/dup.jpg"])
    assert rows.tolist() == [-1, 0]


# ---------------------------------------------------------------- recipes on soft targets

def test_class_weights_from_soft_targets_and_drawn_labels():
    soft = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.5, 0.5],
                         [0.0, 0.0, 1.0]])
    w = class_weights(soft, 3, "balanced")
    assert w[1] > w[2] > w[0]               # soft counts 2.5, 1.5, 2
    loader = TargetLoader(MemoryLoader(torch.zeros(6, 1, 2, 2), torch.arange(6), 6, False), soft, draw=True)
    (_, labels), = list(loader)
    assert labels.dtype == torch.long and labels[[1, 2, 5]].tolist() == [0, 0, 2] and labels[0] in (0, 1)
    (_, targets), = list(TargetLoader(loader.loader, soft))
    assert torch.equal(targets, soft)


# ---------------------------------------------------------------- a data set with votes, as users have it

@pytest.fixture(scope="module")
def voted(tmp_path_factory):
    """dataset/train/<class>/Training_<n>.png (10 per emotion) split 7/3 by validation_split.py, and votes.csv
    keyed by the paths the zip has (train/happy/...): a clear majority for each face's class, except, in each
    half, a Neutral face voted Contempt, a Happy one voted not a face and a Sad one with no row; in train_new
    an Angry face with no majority (but a distribution)."""
    root = tmp_path_factory.mktemp("ferplus")
    rng = np.random.default_rng(0)
    for label, emotion in enumerate(EMOTIONS):
        folder = root / "dataset/train" / emotion
        folder.mkdir(parents=True)
        for i in range(10):
            cv2.imwrite(str(folder / f"Training_{1000 + 10 * label + i}.png"), pattern(label, rng))
    r = run_script("validation_split.py", "--dataset_path", root / "dataset", "--val_ratio", "0.3")
    assert r.returncode == 0, r.stderr
    special = {"Neutral": dict(contempt=7, neutral=3), "Happy": dict(NF=10), "Sad": None,
               "Angry": dict(anger=4, disgust=4, fear=2)}
    column = dict(zip(ferplus.COLUMN_CLASSES, COLUMNS))
    rows = []
    for half in ("train_new", "val_new"):
        for emotion in EMOTIONS:
            for i, image in enumerate(sorted((root / "dataset" / half / emotion).iterdir())):
                counts = {column[emotion]: 8, "unknown": 2}
                if i == 0 and emotion in special and not (emotion == "Angry" and half == "val_new"):
                    counts = special[emotion]
                if counts is not None:
                    rows.append([f"train/{emotion.lower()}/{image.name}", *votes(**counts)])
    write_csv(root / "votes.csv", HEADER, rows)
    return root


def test_training_on_votes_as_a_user_types_it_then_resume(voted, tmp_path):
    out, onnx = tmp_path / "ferplus.pth", tmp_path / "ferplus.onnx"
    args = ["--dataset_path", voted / "dataset", "--votes", voted / "votes.csv", "--epochs", "2", "--batch_size", "8",
            "--num_workers", "0", "--output_model", out, "--output_onnx", onnx]
    # from the shipped 7-class model: its features and the rows of the 7 classes it knows, a new row for Contempt
    r = run_script("fine_tuning.py", *args, "--init_from", REPO / "models/fer_model.pth", "--mixup", "0.2")
    assert r.returncode == 0, r.stderr
    assert "classifier head re-initialised for 8 classes (was 7), keeping the rows of Angry" in r.stdout
    assert "votes: 47 of 49 train_new images have a FER+ target; left out 1 without votes and 1 whose votes" in r.stdout
    assert "FER+ votes, probability mode" in r.stdout and r.stdout.count("epoch   ") == 2
    ckpt = load_checkpoint(out, expected_type="default")
    assert ckpt["class_names"] == ferplus.CLASS_NAMES
    assert ckpt["votes"]["file"] == "votes.csv" and ckpt["votes"]["mode"] == "probability"
    assert json.loads((tmp_path / "ferplus_metrics.json").read_text())["votes"]["mode"] == "probability"
    assert onnx.is_file()

    last = tmp_path / "ferplus.last.pth"
    r = run_script("fine_tuning.py", *args, "--epochs", "3", "--resume", last)
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout and "epoch   3/3" in r.stdout and load_checkpoint(last)["epoch"] == 3
    # resuming on other targets is refused: the votes and their mode are part of the run
    r = run_script("fine_tuning.py", *args, "--epochs", "4", "--resume", last, "--vote_mode", "majority")
    assert r.returncode == 1 and "was trained on FER+ votes (votes.csv, --vote_mode probability), this run asks " \
        "for FER+ votes (votes.csv, --vote_mode majority)" in r.stderr and "Traceback" not in r.stderr


def test_crossentropy_mode_trains_streamed_too(voted, tmp_path):
    r = run_script("fine_tuning.py", "--dataset_path", voted / "dataset", "--votes", voted / "votes.csv",
                   "--vote_mode", "crossentropy", "--epochs", "1", "--batch_size", "8", "--num_workers", "0",
                   "--no_cache", "--ema_decay", "0", "--output_model", tmp_path / "m.pth", "--output_onnx", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    assert "votes: 47 of 49 train_new images" in r.stdout and "streamed from disk" in r.stdout
    assert load_checkpoint(tmp_path / "m.pth")["votes"]["mode"] == "crossentropy"


def test_vote_head_learns_votes_beside_the_folders_labels_then_resume(voted, tmp_path):
    out = tmp_path / "m.pth"
    args = ["--dataset_path", voted / "dataset", "--vote_head", voted / "votes.csv", "--epochs", "1", "--batch_size",
            "8", "--num_workers", "0", "--output_model", out, "--output_onnx", tmp_path / "m.onnx"]
    r = run_script("fine_tuning.py", *args)
    assert r.returncode == 0, r.stderr
    # every train_new face keeps its folder label; the head learns the 47 with a distribution
    assert "vote head: 47 of 49 train images have a FER+ target" in r.stdout
    assert "data: 49 train / 21 val images in 7 classes" in r.stdout and "a FER+ vote head (weight 0.5)" in r.stdout
    ckpt = load_checkpoint(out, expected_type="default")
    assert ckpt["class_names"] == sorted(EMOTIONS) and ckpt["votes"]["mode"] == "head"
    assert not any(k.startswith("vote_head") or "linear" in k for k in ckpt["state_dict"])   # the model alone
    last = load_checkpoint(tmp_path / "m.last.pth")
    assert last["vote_head"]["linear.weight"].shape == (8, 128)
    r = run_script("fine_tuning.py", *args, "--epochs", "2", "--resume", tmp_path / "m.last.pth", "--no_cache")
    assert r.returncode == 0, r.stderr
    assert "epoch   2/2" in r.stdout and "streamed from disk" in r.stdout
    # resuming without the head is refused, as resuming on other targets is
    plain = [a for a in args if a not in ("--vote_head", voted / "votes.csv")]
    r = run_script("fine_tuning.py", *plain, "--epochs", "3", "--resume", tmp_path / "m.last.pth")
    assert r.returncode == 1 and "with a FER+ vote head (votes.csv), this run asks for the folders' labels" in r.stderr


def test_vote_head_loss_counts_only_faces_with_votes():
    from fer_common.train.recipes import VoteHead

    head = VoteHead(4, weight=2.0)
    embedding = torch.randn(3, 4)
    targets = torch.zeros(3, 8)
    targets[0, 2] = 1.0
    expected = -torch.log_softmax(head.linear(embedding[:1]), 1)[0, 2] * 2.0
    assert torch.allclose(head.loss(embedding, targets), expected)
    assert head.loss(embedding, torch.zeros(3, 8)).item() == 0.0


def test_majority_mode_leaves_out_faces_without_a_majority(voted):
    from fer_common.datasets.folders import list_samples

    samples, _ = list_samples(voted / "dataset/train_new")
    table = ferplus.read_votes(voted / "votes.csv")
    kept, labelled = ferplus.keep_labelled(table, samples, "majority", "train_new")
    assert len(kept) == 46 and labelled.without_votes == 1 and labelled.no_label == 2
    assert (labelled.targets.sum(1) == 1).all() and (labelled.labels == labelled.targets.argmax(1)).all()
    assert (labelled.labels == index("Contempt")).sum() == 1


def test_vote_flags_refused_in_one_line(voted, tmp_path, capsys):
    from fer_common.commands import train

    base = ["--dataset_path", voted / "dataset", "--epochs", "1", "--num_workers", "0",
            "--output_model", tmp_path / "m.pth", "--output_onnx", tmp_path / "m.onnx"]
    parser = train.get_args_parser()
    assert "needs --votes FILE" in one_error_line(capsys, train.main, parser, [*base, "--vote_mode", "majority"])
    assert "file not found" in one_error_line(capsys, train.main, parser, [*base, "--votes", tmp_path / "none.csv"])
    bad = write_csv(tmp_path / "bad.csv", ["file", "happiness"], [["a.png", "3"]])
    assert "is not a FER+ votes file" in one_error_line(capsys, train.main, parser, [*base, "--votes", bad])
    other = write_csv(tmp_path / "other.csv", HEADER, [["train/happy/elsewhere.png", *votes(happiness=10)]])
    line = one_error_line(capsys, train.main, parser, [*base, "--votes", other])
    assert "has a FER+ target" in line and "are these the votes of this data set?" in line
    line = one_error_line(capsys, train.main, parser, [*base, "--vote_head", other])
    assert "--vote_head" in line and "are these the votes of this data set?" in line
    assert "needs --vote_head FILE" in one_error_line(capsys, train.main, parser, [*base, "--vote_head_weight", "2"])
    both = [*base, "--vote_head", voted / "votes.csv"]
    assert "give one of them" in one_error_line(capsys, train.main, parser, [*both, "--votes", voted / "votes.csv"])
    assert "--mixup" in one_error_line(capsys, train.main, parser, [*both, "--mixup", "0.2"])
    assert not (tmp_path / "m.pth").exists()


def test_evaluate_against_fer_plus_majority(voted, models, tmp_path):
    # The random 7-class model cannot predict Contempt: its images count as errors, the report has 8 classes.
    r = run_script("evaluate.py", "--data", voted / "dataset/val_new", "--votes", voted / "votes.csv",
                   "--checkpoint", models / "fer_model.pth", "--output_dir", tmp_path / "ev")
    assert r.returncode == 0, r.stderr
    assert "votes: 19 of 21 " in r.stdout and "the model does not predict Contempt: its 1 image(s)" in r.stdout
    assert "FER+ majority accuracy on 19 images (8 classes)" in r.stdout
    metrics = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert metrics["votes"]["file"] == "votes.csv" and metrics["images"] == 19
    assert metrics["per_class"]["Contempt"]["support"] == 1 and metrics["class_names"][-1] == "Contempt"


# ---------------------------------------------------------------- fer2013.csv with fer2013new.csv

def fer2013_csvs(folder, usages=("Training",) * 6 + ("PublicTest",) * 3 + ("PrivateTest",) * 2, shift=False):
    """A tiny fer2013.csv and its fer2013new.csv: row i's votes say happiness for even rows, sadness for odd."""
    rng = np.random.default_rng(1)
    rows = [[i % 7, " ".join(map(str, rng.integers(0, 256, 48 * 48))), u] for i, u in enumerate(usages)]
    new_usages = usages[1:] + usages[:1] if shift else usages
    new = [[u, f"fer{i:07d}.png", *votes(**({"happiness": 9, "NF": 1} if i % 2 == 0 else {"sadness": 9, "NF": 1}))]
           for i, u in enumerate(new_usages)]
    return (write_csv(folder / "fer2013.csv", ["emotion", "pixels", "Usage"], rows),
            write_csv(folder / "fer2013new.csv", ["Usage", "Image name", *COLUMNS], new))


def test_fer2013_csv_import_attaches_fer2013new_row_by_row(tmp_path):
    src, new = fer2013_csvs(tmp_path)
    r = run_script("download_dataset.py", "--source", src, "--ferplus", new, "--output", tmp_path / "dataset",
                   "--keep_splits")
    assert r.returncode == 0, r.stderr
    assert "FER+ votes of fer2013new.csv for 11 images" in r.stdout
    table = ferplus.read_votes(tmp_path / "dataset/ferplus_votes.csv")
    assert len(table.keys) == 11 and all((tmp_path / "dataset" / key).is_file() for key in table.keys)
    labels = dict(zip(table.keys, ferplus.majority_labels(table.votes)))
    # fer2013.csv's row 1 (label 0, Angry) is Training_00001.png: FER+ row 0 says happiness
    assert labels["train/Angry/Training_00001.png"] == index("Happy")
    assert labels["train/Disgust/Training_00002.png"] == index("Sad")
    assert labels["private_test/Happy/PrivateTest_00011.png"] == index("Happy")     # row 11: label 3
    assert json.loads((tmp_path / "dataset/.complete.json").read_text())["ferplus"]["images"] == 11


def test_fer2013new_of_another_row_order_is_refused(tmp_path, capsys):
    from fer_common.commands import download

    src, new = fer2013_csvs(tmp_path, shift=True)
    line = one_error_line(capsys, download.main, download.get_args_parser(),
                          ["--source", src, "--ferplus", new, "--output", tmp_path / "dataset"])
    assert "does not follow the imported fer2013.csv row by row" in line
    assert not (tmp_path / "dataset").exists()
