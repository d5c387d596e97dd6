"""Reliability, round 3 (issue 18): outputs inside data sets, strict JSON, bounded pictures, non-regular files,
long names, full disks, quantized models, symlink loops and names that are not UTF-8. Each case ends with one
`error:` line or the right result; no traceback, no hang, no file of the user's changed."""

import errno
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_common import files
from fer_common.cli import make_parser, run_main
from fer_common.datasets.folders import list_samples
from fer_common.datasets.download import import_dataset
from fer_common.errors import FERError
from fer_common.files import (check_outside, check_regular_file, check_writable, make_temp_dir, replace_dir, save_torch,
                              strict_json, write_image, write_json)
from fer_common.metrics import draw_confusion_matrix
from fer_common.datasets.splitting import split_dataset
from synthetic import REPO, make_folder_dataset, run_script

MODELS = REPO / "models"
LONG = "n" * 245            # + ".json" = 250 characters: a legal name whose old temporary name was too long


def strict_loads(text: str):
    """json.loads as a strict parser reads: no NaN, Infinity or -Infinity."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and "it/s]" not in line and "img/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def data(tmp_path):
    """tmp/ds/{train,test}/<7 emotions>/ with 3 and 2 images per class."""
    return make_folder_dataset(tmp_path / "ds", per_class=(3, 2), splits=("train", "test"))


def tree(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


# ---------------------------------------------------------------- outputs inside a data set

def test_evaluate_refuses_an_output_dir_inside_a_class_folder(data):
    before = tree(data)
    r = run_script("evaluate.py", "--data", data / "test", "--output_dir", data / "test" / "Happy", timeout=120)
    assert r.returncode == 1
    assert "--output_dir" in one_error_line(r.stderr) and "inside the data folder --data" in r.stderr
    assert tree(data) == before


def test_check_outside_resolves_links(tmp_path, data):
    (tmp_path / "results").symlink_to(data / "test" / "Sad")
    with pytest.raises(FERError, match="inside the data folder"):
        check_outside({"--output_dir": tmp_path / "results" / "x"}, {"--data": data / "test"})
    with pytest.raises(FERError, match="is the data folder"):
        check_outside({"--output_dir": data / "test"}, {"--data": data / "test"})
    check_outside({"--output_dir": tmp_path / "evaluation", "--other": None}, {"--data": data / "test"})


def test_split_refuses_halves_that_are_links_into_train(data):
    (data / "train_new").symlink_to(data / "train" / "Happy")
    before = tree(data / "train")
    with pytest.raises(FERError, match="inside the data folder train"):
        split_dataset(data, 0.3, force=True)
    assert tree(data / "train") == before


def test_import_refuses_an_output_inside_the_source_folder(data):
    with pytest.raises(FERError, match="inside the data folder --source"):
        import_dataset(str(data), data / "imported")
    assert not (data / "imported").exists() and not (data / "imported.download").exists()


# ---------------------------------------------------------------- strict JSON

def test_write_json_writes_strict_json(tmp_path):
    obj = {"nan": float("nan"), "inf": [float("inf"), -float("inf")], "x": np.float32(0.5), "n": np.int64(3),
           "a": np.array([1.0, np.nan]), "name": "\udcff.jpg", "ok": 1.25}
    write_json(tmp_path / "m.json", obj)
    text = (tmp_path / "m.json").read_bytes().decode("utf-8")       # valid UTF-8, too
    assert strict_loads(text) == {"nan": None, "inf": [None, None], "x": 0.5, "n": 3, "a": [1.0, None],
                                  "name": "\\xff.jpg", "ok": 1.25}
    assert strict_loads(strict_json({"t": float("nan")})) == {"t": None}


def test_the_shipped_metrics_json_is_strict():
    history = strict_loads((MODELS / "fer_model_metrics.json").read_text())
    for ingredient in history["averaged_from"]:            # the shipped model is a weight average
        assert ingredient["history"][0]["improvement"] is None   # the first epoch's NaN, written as null


# ---------------------------------------------------------------- pictures that grow without bound

def test_confusion_matrix_of_200_classes_is_bounded_and_labels_never_crash(tmp_path):
    n = 200
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 30, (n, n)) + 40 * np.eye(n, dtype=np.int64)
    names = [f"c{i}" for i in range(n)]
    names[:4] = ["$x^2$", "a_b$", "\udcff bad", "x" * 300]
    draw_confusion_matrix(cm, names, tmp_path / "cm.png", title="on \udcff")
    image = cv2.imread(str(tmp_path / "cm.png"))
    assert image.shape[0] * image.shape[1] < 6_000_000, image.shape       # was 212 megapixels
    # A few classes keep the 72-pixel cells with the numbers in them.
    draw_confusion_matrix(np.eye(3, dtype=np.int64), ["$a$", "b", "c"], tmp_path / "small.png")
    assert cv2.imread(str(tmp_path / "small.png")).shape[1] >= 110 + 3 * 72


# ---------------------------------------------------------------- non-regular files

@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_download_refuses_a_fifo_or_device_without_hanging(tmp_path, kind):
    source = tmp_path / "fer2013.csv"
    if kind == "fifo":
        os.mkfifo(source)
    else:
        source = Path("/dev/zero")
    r = run_script("download_dataset.py", "--source", source, "--output", tmp_path / "dataset", timeout=60)
    assert r.returncode == 1
    assert "give a regular file or a folder" in one_error_line(r.stderr)
    assert not (tmp_path / "dataset").exists()


def test_check_regular_file(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(FERError, match="is a FIFO"):
        check_regular_file(tmp_path / "pipe", "--source")
    with pytest.raises(FERError, match="is a device"):
        check_regular_file("/dev/zero", "--input")
    with pytest.raises(FERError, match="is a folder"):
        check_regular_file(tmp_path, "--input")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(FERError, match="symbolic link loop"):
        check_regular_file(tmp_path / "loop")
    (tmp_path / "f").write_text("x")
    assert check_regular_file(tmp_path / "f") == tmp_path / "f"
    assert check_regular_file(tmp_path, folder_ok=True) == tmp_path


# ---------------------------------------------------------------- long names

def test_250_character_names_are_written(tmp_path):
    import torch

    write_json(tmp_path / f"{LONG}.json", {"a": 1})
    write_image(tmp_path / f"{LONG}.png", np.zeros((4, 4, 3), np.uint8))
    save_torch({"w": torch.zeros(2)}, tmp_path / f"{LONG}.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{LONG}{s}" for s in (".json", ".png", ".pth"))
    final = tmp_path / ("d" * 250)
    for _ in range(2):      # made, then replaced whole
        tmp = make_temp_dir(final)
        (tmp / "x").write_text("x")
        replace_dir(tmp, final)
    assert sorted(p.name for p in tmp_path.iterdir())[0] == final.name and (final / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(FERError, match="cannot write --output .*: File name too long$"):
        check_writable(tmp_path / ("x" * 300 + ".json"), "--output")


def test_a_downloaded_file_with_a_long_name_gets_a_short_local_name():
    from fer_common.datasets.download import url_file_name

    from fer_common.datasets.download import download_cache

    assert download_cache(Path("data") / ("d" * 250)).name.endswith(".download")
    assert len(download_cache(Path("data") / ("d" * 250)).name) <= 255
    assert download_cache(Path("data") / "dataset") == Path("data") / "dataset.download"
    name = url_file_name("https://example.org/" + "a" * 300 + ".tar.gz")
    assert len(name) <= 100 and name.endswith(".tar.gz")
    assert url_file_name("https://example.org/fer2013.csv.gz") == "fer2013.csv.gz"


# ---------------------------------------------------------------- full and read-only disks

def _full_disk(monkeypatch, target, method):
    """Make `target.method` write a part of its data, then fail as a full disk does."""
    original = getattr(target, method)

    def write(self, data, *args, **kwargs):
        original(self, data[:len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(target, method, write)


@pytest.mark.parametrize("writer", ["json", "image", "torch"])
def test_a_full_disk_is_one_error_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch, writer):
    import torch

    path = tmp_path / f"out.{ {'json': 'json', 'image': 'png', 'torch': 'pth'}[writer] }"
    path.write_bytes(b"the user's old file")
    if writer == "torch":
        def save(obj, f, *args, **kwargs):
            f.write(b"PK half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(torch, "save", save)
    else:
        _full_disk(monkeypatch, Path, "write_text" if writer == "json" else "write_bytes")
    with pytest.raises(FERError) as e:
        {"json": lambda: write_json(path, {"a": 1}),
         "image": lambda: write_image(path, np.zeros((8, 8, 3), np.uint8)),
         "torch": lambda: save_torch({"w": torch.zeros(3)}, path)}[writer]()
    assert str(path) in str(e.value) and "No space left on device" in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == [path.name] and path.read_bytes() == b"the user's old file"


def test_a_read_only_disk_at_the_rename_is_one_error(tmp_path, monkeypatch):
    def replace(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(FERError, match="cannot write .*out.json: Read-only file system"):
        write_json(tmp_path / "out.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(files.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(OSError(errno.EACCES, "Permission denied")))
    with pytest.raises(FERError, match="cannot write .*out.json: Permission denied"):
        write_json(tmp_path / "out.json", {"a": 1})


def test_a_full_disk_during_a_split_is_one_error_and_leaves_no_half_split(data, monkeypatch):
    calls = []

    def copy2(src, dst):
        calls.append(src)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        shutil.copyfile(src, dst)
    monkeypatch.setattr(shutil, "copy2", copy2)
    before = tree(data)
    with pytest.raises(FERError, match="cannot write the split into .*No space left on device"):
        split_dataset(data, 0.3)
    assert tree(data) == before


def test_evaluate_on_a_full_disk_writes_all_its_files_or_none(data, tmp_path, monkeypatch, capsys):
    import evaluate

    _full_disk(monkeypatch, Path, "write_text")         # metrics.json, written last, fails
    out = tmp_path / "ev"
    with pytest.raises(SystemExit) as e:
        run_main(evaluate.main, evaluate.get_args_parser(), ["--data", str(data / "test"), "--checkpoint",
                                                             str(MODELS / "fer_model.onnx"), "--output_dir", str(out)])
    assert e.value.code == 1
    assert "metrics.json: No space left on device" in one_error_line(capsys.readouterr().err)
    assert list(out.iterdir()) == []


def test_run_main_turns_any_os_error_into_one_line(capsys):
    def main(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out.csv")
    with pytest.raises(SystemExit) as e:
        run_main(main, make_parser("test"), [])
    assert e.value.code == 1
    assert capsys.readouterr().err == "error: No space left on device (/data/out.csv)\n"


# ---------------------------------------------------------------- quantize and export commands

def test_quantizing_an_int8_model_is_one_clear_error(tmp_path, capsys):
    from fer_common.commands import quantize

    with pytest.raises(SystemExit) as e:
        run_main(quantize.main, quantize.get_args_parser(), [str(MODELS / "fer_model.int8.onnx"), str(tmp_path / "q.onnx")])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "already quantized" in err
    assert list(tmp_path.iterdir()) == []


def test_onnx_export_never_names_a_flag_it_does_not_have(tmp_path, capsys):
    import torch

    from fer_common.commands import export as onnx_export

    torch.save({"conv.weight": torch.zeros(2, 1, 3, 3)}, tmp_path / "bare.pth")
    with pytest.raises(SystemExit):
        run_main(onnx_export.main, onnx_export.get_args_parser(), [str(tmp_path / "bare.pth"), str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "bare weights" in err
    flags = set(onnx_export.get_args_parser()._option_string_actions)
    assert all(word.rstrip(",.;:)") in flags for word in err.split() if word.startswith("--")), err


# ---------------------------------------------------------------- symlink loops, names that are not UTF-8

def _plant_loops(folder: Path) -> None:
    (folder / "self.jpg").symlink_to(folder / "self.jpg")           # a link to itself
    (folder / "a.png").symlink_to(folder / "b.png")
    (folder / "b.png").symlink_to(folder / "a.png")
    (folder / "up").symlink_to(folder.parent)                       # a folder link back up the tree


def test_symlink_loops_in_a_data_set_are_skipped(data, tmp_path):
    for split in ("train", "test"):
        _plant_loops(data / split / "Happy")
    samples, names = list_samples(data / "test")
    assert len(samples) == 14 and "Happy" in names
    result = split_dataset(data, 0.3)
    assert sum(result["counts"]["train_new"].values()) + sum(result["counts"]["val_new"].values()) == 21
    info = import_dataset(str(data), tmp_path / "imported")
    assert sum(info["counts"]["train"].values()) == 21


def test_an_import_source_or_output_in_a_link_loop_is_one_line(tmp_path, data):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(FERError, match="--source .*loop is a symbolic link loop"):
        import_dataset(str(tmp_path / "loop"), tmp_path / "dataset")
    with pytest.raises(FERError, match="cannot create"):
        import_dataset(str(data), tmp_path / "loop" / "dataset")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "loop"]


def test_a_file_name_that_is_not_utf8_is_printed_not_a_crash(data, tmp_path):
    (data / "test" / "Angry").joinpath(os.fsdecode(b"\xff.jpg")).write_bytes(b"not an image")
    r = run_script("evaluate.py", "--data", data / "test", "--checkpoint", MODELS / "fer_model.onnx",
                   "--output_dir", tmp_path / "ev", "--batch_size", "8", timeout=300,
                   env={"PYTHONIOENCODING": "utf-8:strict"})
    assert r.returncode == 0, r.stderr
    assert "skipped 1 unreadable image(s)" in r.stdout and "\\xff.jpg" in r.stdout
    strict_loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))


def test_class_folders_that_are_not_utf8_are_refused(data):
    bad = data / "test" / os.fsdecode(b"Caf\xe9")
    shutil.copytree(data / "test" / "Happy", bad)
    with pytest.raises(FERError, match="is not valid UTF-8"):
        list_samples(data / "test")
    shutil.copytree(data / "test" / "Happy", data / "train" / bad.name)
    with pytest.raises(FERError, match="is not valid UTF-8"):
        split_dataset(data, 0.3)
    assert not (data / "train_new").exists()
