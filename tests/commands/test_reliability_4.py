"""Reliability, round 4 (issue 32): each category a hostile probe found, one test per category."""

import shutil

import pytest

import real_time_video
from fer_common.cli import run_main
from helpers_models import TEST_VIDEO
from synthetic import REPO

MODELS = REPO / "models"


def run_video(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(real_time_video.main, real_time_video.get_args_parser(), [str(a) for a in argv])
    return e.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("flag, target", [("--log_csv", "checkpoint"), ("--save_output", "detector"),
                                          ("--summary", "checkpoint")])
def test_an_output_never_replaces_a_model_the_command_reads(tmp_path, capsys, flag, target):
    model = shutil.copy(MODELS / "fer_model.int8.onnx", tmp_path / "m.onnx")
    detector = shutil.copy(MODELS / "face_detection_yunet_2023mar.onnx", tmp_path / "yunet.onnx")
    victim = {"checkpoint": model, "detector": detector}[target]
    before = open(victim, "rb").read()
    suffix = {"--save_output": ".mp4", "--summary": ".json"}.get(flag)
    out = victim
    if suffix:                           # a name the flag's type check takes, the same file through a link
        out = tmp_path / f"link{suffix}"
        out.symlink_to(victim)
    code, err = run_video(["--video", TEST_VIDEO, "--no_display", "--max_frames", 2, "--checkpoint", model,
                           "--detector_model", detector, flag, out, "--overwrite"], capsys)
    assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and "input" in err[0], err
    assert open(victim, "rb").read() == before
