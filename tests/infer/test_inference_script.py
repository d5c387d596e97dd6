import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import inference
from fer_common.infer import detection
from fer_common.infer import predictor as predictor_module
from fer_common.cli import run_main
from fer_common.labels import EMOTIONS
from helpers_models import TEST_IMAGE, run_script, save_advanced


def run(argv, capsys):
    """inference.py in-process, as run_main would: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        run_main(inference.main, inference.get_args_parser(), [str(a) for a in argv])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_parser_defaults():
    args = inference.get_args_parser().parse_args(["x.jpg"])
    assert (args.model_type, args.provider, args.use_onnx, args.tta) == ("default", "auto", False, True)
    assert args.detector in detection.DETECTORS
    assert (args.output, args.resume, args.recursive, args.strict, args.batch_size) == (None, False, False, False, 64)


def test_text_output_and_annotated_image(models, tmp_path):
    ann = tmp_path / "ann.png"
    r = run_script("inference.py", TEST_IMAGE, "--checkpoint", models / "fer_model.pth", "--save_annotated", ann)
    assert r.returncode == 0, r.stderr
    assert "fer_model.pth" in r.stdout and "1 face" in r.stdout
    percentages = [line for line in r.stdout.splitlines() if line.strip().endswith("%") or "%  " in line]
    assert len(percentages) == 7 and all(any(e in line for line in percentages) for e in EMOTIONS)
    image = cv2.imread(str(ann))
    assert image.shape == cv2.imread(str(TEST_IMAGE)).shape


def test_readme_command_with_onnx_found_in_the_current_folder(models, tmp_path):
    shutil.copy(models / "fer_model.onnx", tmp_path / "fer_model.onnx")
    shutil.copytree(TEST_IMAGE.parent, tmp_path / "Test_files")
    r = run_script("inference.py", "Test_files/IMG_test_1.jpg", "--use_onnx", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fer_model.onnx" in r.stderr                     # which file was loaded; stdout stays pure JSON
    result = json.loads(r.stdout)
    assert result[0]["source"] == "Test_files/IMG_test_1.jpg" and len(result[0]["faces"]) == 1
    face = result[0]["faces"][0]
    assert len(face["box"]) == 4 and list(face["probabilities"]) == EMOTIONS
    assert abs(sum(face["probabilities"].values()) - 1) < 1e-4 and "embedding" not in face


def test_folder_no_detect_json_embedding(models, tmp_path, capsys):
    folder = tmp_path / "crops"
    folder.mkdir()
    face = cv2.resize(cv2.imread(str(TEST_IMAGE))[60:170, 170:280], (48, 48))
    cv2.imwrite(str(folder / "b_face.png"), cv2.cvtColor(face, cv2.COLOR_BGR2GRAY))
    shutil.copy(TEST_IMAGE, folder / "a_photo.jpg")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "annotated"
    code, stdout, _ = run([folder, "--checkpoint", models / "fer_model.pth", "--no_detect", "--json", "--embedding",
                           "--save_annotated", out], capsys)
    assert code == 0
    result = json.loads(stdout)
    assert [r["source"] for r in result] == [str(folder / "a_photo.jpg"), str(folder / "b_face.png")]
    assert result[1]["faces"][0]["box"] == [0, 0, 48, 48] and len(result[1]["faces"][0]["embedding"]) == 128
    assert sorted(p.name for p in out.iterdir()) == ["a_photo.jpg", "b_face.png"]


def test_tta_views_flag_runs_recorded_and_checked(models, tmp_path, capsys):
    parse = inference.get_args_parser().parse_args
    assert [parse(["x.jpg", *flags]).tta for flags in ([], ["--no_tta"], ["--tta_views", "10"], ["--tta_views", "2"],
                                                       ["--tta_views", "10", "--no_tta"])] == [True, False, 10, True, False]
    out = tmp_path / "out.jsonl"
    code, stdout, err = run([TEST_IMAGE, "--checkpoint", models / "fer_model.onnx", "--tta_views", "10",
                             "--output", out], capsys)
    assert code == 0, err
    assert "TTA of 10 views" in stdout and json.loads(Path(f"{out}.meta.json").read_text())["tta"] == 10
    # resuming that output with another view count is refused, as another model would be
    code, _, err = run([TEST_IMAGE, "--checkpoint", models / "fer_model.onnx", "--output", out, "--resume"], capsys)
    assert code == 1 and "tta" in err and len(err.strip().splitlines()) == 1
    code, _, err = run([TEST_IMAGE, "--tta_views", "3"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "error: argument --tta_views: must be one of 2, 4, 10, got '3'" in err


def test_onnx_and_pth_give_the_same_json(models, capsys):
    _, a, _ = run([TEST_IMAGE, "--checkpoint", models / "fer_model.pth", "--json"], capsys)
    _, b, _ = run([TEST_IMAGE, "--checkpoint", models / "fer_model.onnx", "--json"], capsys)
    pa, pb = json.loads(a)[0]["faces"][0], json.loads(b)[0]["faces"][0]
    assert pa["box"] == pb["box"]
    np.testing.assert_allclose(list(pa["probabilities"].values()), list(pb["probabilities"].values()), atol=1e-4)


def test_advanced_tiny_backbone(tmp_path, capsys):
    save_advanced(tmp_path / "adv.pth")
    code, out, _ = run([TEST_IMAGE, "--model_type", "advanced", "--checkpoint", tmp_path / "adv.pth", "--tta"], capsys)
    assert code == 0 and "advanced model" in out and "1 face" in out


def test_no_face_found(models, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "wall.png"), np.full((200, 300, 3), 120, np.uint8))
    code, out, err = run([tmp_path / "wall.png", "--checkpoint", models / "fer_model.pth"], capsys)
    assert code == 2 and "no face found" in out and "--no_detect" in out


def test_missing_model_message(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(predictor_module, "SHIPPED_MODELS_DIR", tmp_path / "models")
    code, _, err = run([TEST_IMAGE], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "fer_model.pth" in err and "--checkpoint" in err and "fine_tuning.py" in err
    code, _, err = run([TEST_IMAGE, "--model_type", "advanced", "--use_onnx"], capsys)
    assert "fer_model_advanced.onnx" in err and "advanced_fine_tuning.py" in err


@pytest.mark.parametrize("case", ["missing_image", "not_an_image", "missing_checkpoint", "wrong_type_pth",
                                  "wrong_type_onnx", "unwritable", "bad_yunet_model"])
def test_bad_input_is_one_line(case, models, tmp_path, monkeypatch, capsys):
    argv = [TEST_IMAGE, "--checkpoint", models / "fer_model.pth"]
    expect = {"missing_image": "image not found", "not_an_image": "not an image",
              "missing_checkpoint": "model file not found", "wrong_type_pth": "not 'advanced'",
              "wrong_type_onnx": "not 'advanced'", "unwritable": "cannot write",
              "bad_yunet_model": "--detector_model"}[case]
    if case == "missing_image":
        argv[0] = tmp_path / "nope.jpg"
    elif case == "not_an_image":
        argv[0] = tmp_path / "text.jpg"
        argv[0].write_text("not a jpeg")
    elif case == "missing_checkpoint":
        argv[2] = tmp_path / "nope.pth"
    elif case == "wrong_type_pth":
        argv += ["--model_type", "advanced"]
    elif case == "wrong_type_onnx":
        argv[2] = models / "fer_model.onnx"
        argv += ["--model_type", "advanced"]
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        argv += ["--save_annotated", tmp_path / "file" / "sub" / "ann.png"]
    else:
        (tmp_path / "yunet.onnx").write_text("not a model")
        argv += ["--detector", "yunet", "--detector_model", tmp_path / "yunet.onnx"]
    code, _, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], err


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    r = run_script("inference.py", tmp_path / "missing.jpg", "--checkpoint", tmp_path / "x.pth")
    assert r.returncode == 1 and r.stderr.strip() == f"error: image not found: {tmp_path / 'missing.jpg'}"


def make_crop_tree(root):
    """Face crops in nested folders, with one unreadable file in the middle; returns (readable, unreadable)."""
    face = cv2.cvtColor(cv2.resize(cv2.imread(str(TEST_IMAGE))[60:170, 170:280], (48, 48)), cv2.COLOR_BGR2GRAY)
    names = ["a.png", "b.jpg", "x/c.png", "x/d.png", "x/y/e.png", "z/f.png"]
    for k, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), np.roll(face, 3 * k, axis=1))
    (root / "x" / "bad.png").write_bytes(b"\x89PNG cut short")
    return [str(root / n) for n in names], str(root / "x" / "bad.png")


def test_bulk_jsonl_recursive_then_resume_after_a_cut(models, tmp_path, capsys):
    images, bad = make_crop_tree(tmp_path / "faces")
    out = tmp_path / "out.jsonl"
    argv = [tmp_path / "faces", "--recursive", "--no_detect", "--checkpoint", models / "fer_model.onnx",
            "--output", out, "--batch_size", 2, "--workers", 2]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    full = out.read_bytes()
    lines = [json.loads(line) for line in full.decode().splitlines()]
    listed = sorted(images[:2]) + [bad] + images[2:]             # input order, sub-folders after the files
    assert [d["source"] for d in lines] == listed                 # the unreadable image is a row too
    assert lines[2]["error"] == "cannot decode" and lines[2]["faces"] == [] and lines[2]["size"] is None
    assert json.loads((tmp_path / "out.jsonl.meta.json").read_text())["model"] == "fer_model.onnx"
    assert f"skipped 1 unreadable image(s): {bad}" in err
    assert "7 images: 6 read, 1 skipped (unreadable), 0 without a face; 6 faces" in stdout
    code, js, _ = run(argv[:5] + ["--json"], capsys)               # the same objects as --json prints
    assert code == 0 and json.loads(js) == lines

    cut = b"".join(full.splitlines(keepends=True)[:3])
    out.write_bytes(cut + full[len(cut):len(cut) + 40])           # killed while writing the 4th line
    code, _, err = run(argv, capsys)
    assert code == 1 and err.strip().splitlines() == [f"error: output {out} already exists: pass --resume to "
                                                      "continue it, or --overwrite to replace it"]
    code, stdout, err = run(argv + ["--resume"], capsys)
    assert code == 0, err
    assert "half-written (40 bytes)" in stdout and "resuming: 3 of 7 images" in stdout
    assert out.read_bytes() == full
    code, stdout, err = run(argv + ["--resume"], capsys)          # all done: every image has its row, once
    assert code == 0 and out.read_bytes() == full and "resuming: 7 of 7 images" in stdout


def test_bulk_csv_skips_unreadable_unless_strict(models, tmp_path, capsys):
    images, bad = make_crop_tree(tmp_path / "faces")
    out = tmp_path / "out.csv"
    argv = [tmp_path / "faces" / "x", "--recursive", "--no_detect", "--checkpoint", models / "fer_model.onnx",
            "--output", out]
    code, _, err = run(argv, capsys)
    assert code == 0 and bad in err
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["source"] for r in rows] == [bad] + images[2:5] and rows[0]["error"] == "cannot decode"
    rows = rows[1:]
    assert {r["face"] for r in rows} == {"1"} and {r["faces"] for r in rows} == {"1"}
    assert all(r["top_emotion"] == max(EMOTIONS, key=lambda e: float(r[e])) for r in rows)
    assert all((r["x"], r["y"], r["w"], r["h"]) == ("0", "0", "48", "48") for r in rows)
    code, _, err = run(argv + ["--overwrite", "--strict"], capsys)
    assert code == 1 and err.strip().splitlines() == [f"error: not an image (cannot decode): {bad} (--strict; "
                                                      "rerun with --resume to go on from here)"]
    code, _, err = run([tmp_path / "faces", "--resume", "--checkpoint", models / "fer_model.onnx"], capsys)
    assert code == 1 and "--resume needs --output" in err
