"""fer_common.files: atomic writes, output checks and folders replaced whole."""

import cv2
import numpy as np
import pytest

from fer_common.cli import FERError
from fer_common.files import (atomic_path, check_outputs, check_outputs_distinct, check_writable, make_temp_dir,
                              replace_dir, write_image, write_json)


def test_atomic_path_appears_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]   # no temporary left behind
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]


def test_write_json_and_image(tmp_path):
    write_json(tmp_path / "a" / "m.json", {"x": 1})
    assert (tmp_path / "a" / "m.json").read_text().strip() == '{\n  "x": 1\n}'
    image = np.zeros((8, 10, 3), np.uint8)
    image[:, :, 2] = 255
    write_image(tmp_path / "red.png", image)
    assert (cv2.imread(str(tmp_path / "red.png")) == image).all()
    with pytest.raises(FERError, match="cannot encode"):
        write_image(tmp_path / "red.nope", image)


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new" / "f.txt") == tmp_path / "new" / "f.txt"   # folders are made
    (tmp_path / "f.txt").write_text("mine")
    with pytest.raises(FERError, match="already exists: pass --overwrite"):
        check_writable(tmp_path / "f.txt", "--output")
    check_writable(tmp_path / "f.txt", overwrite=True)
    with pytest.raises(FERError, match="it is a folder"):
        check_writable(tmp_path / "new", overwrite=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(FERError, match="cannot create folder"):
        check_writable(tmp_path / "file" / "below.txt")


def test_outputs_must_differ_and_not_be_inputs(tmp_path):
    with pytest.raises(FERError, match="--a and --b are the same file"):
        check_outputs_distinct({"--a": tmp_path / "x.csv", "--b": tmp_path / "." / "x.csv"})
    with pytest.raises(FERError):
        check_outputs_distinct({"--out": tmp_path / "v.mp4"}, {"--video": tmp_path / "v.mp4"})
    (tmp_path / "own.pth").write_text("")
    check_outputs({"--model": tmp_path / "own.pth"}, replaceable=[tmp_path / "own.pth"])   # a run's own file
    with pytest.raises(FERError, match="already exists"):
        check_outputs({"--model": tmp_path / "own.pth"})


def test_replace_dir_swaps_a_whole_folder(tmp_path):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new = make_temp_dir(out)
    assert new.parent == tmp_path and new.name.startswith(".dataset")
    (new / "new.txt").write_text("new")
    replace_dir(new, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["dataset"]
