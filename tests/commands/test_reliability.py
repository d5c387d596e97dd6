"""Issue 11: bad input of every kind ends in one `error:` line, never a traceback, a hang or a lost file.

One test (or parametrized family) per category: flags out of range, outputs (distinct, protected, checked
before the work), malformed model files, images, training that would save nonsense, distributed sharding.
"""

import argparse
import importlib
import json
import math
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fer_common import cli
from fer_common.train import loop as training
from fer_common.model.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from fer_common.cli import FERError, run_main
from fer_common.infer.predictor import Predictor
from fer_common.train.loaders import MemoryLoader
from fer_common.files import check_outputs, check_outputs_distinct, writable_image_extension
from fer_common.labels import EMOTIONS
from fer_common.model.networks import FERNet, create_backbone, default_preprocessing, load_backbone_weights
from fer_common.preprocess import read_image
from synthetic import REPO, make_folder_dataset

SHIPPED_ONNX = REPO / "models" / "fer_model.onnx"


def one_error_line(capsys, call) -> str:
    """Run call() (which must exit) and return its single stderr line; fail on a traceback or more lines."""
    with pytest.raises(SystemExit) as e:
        call()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1, err
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


# ---------------------------------------------------------------- flags out of range, at parse time

BAD_FLAGS = [
    ("real_time_video", ["--camera", "-5"], "--camera"),
    ("real_time_video", ["--camera", "1000000"], "--camera"),
    ("real_time_video", ["--device", "cuda:99"], "--device"),
    ("real_time_video", ["--device", "gpu"], "--device"),
    ("real_time_video", ["--detect_every", "0"], "--detect_every"),
    ("real_time_video", ["--smooth", "1.5"], "--smooth"),
    ("real_time_video", ["--max_frames", "-1"], "--max_frames"),
    ("real_time_video", ["--detect_width", "5"], "--detect_width"),
    ("real_time_video", ["--save_output", "out.gif"], "--save_output"),
    ("real_time_video", ["--checkpoint", ""], "--checkpoint"),
    ("inference", ["x.jpg", "--save_annotated", "out.pbm"], "--save_annotated"),
    ("inference", ["x.jpg", "--device", "cuda:x"], "--device"),
    ("evaluate", ["--batch_size", "0"], "--batch_size"),
    ("evaluate", ["--output_dir", ""], "--output_dir"),
    ("fine_tuning", ["--epochs", "0"], "--epochs"),
    ("fine_tuning", ["--batch_size", "-3"], "--batch_size"),
    ("fine_tuning", ["--learning_rate", "nan"], "--learning_rate"),
    ("fine_tuning", ["--learning_rate", "0"], "--learning_rate"),
    ("fine_tuning", ["--weight_decay", "-1"], "--weight_decay"),
    ("fine_tuning", ["--gamma", "inf"], "--gamma"),
    ("fine_tuning", ["--label_smoothing", "1"], "--label_smoothing"),
    ("fine_tuning", ["--dropout", "1.2"], "--dropout"),
    ("fine_tuning", ["--seed", "-1"], "--seed"),
    ("fine_tuning", ["--num_workers", "-2"], "--num_workers"),
    ("fine_tuning", ["--embedding_dim", "0"], "--embedding_dim"),
    ("fine_tuning", ["--output_onnx", "model.pth"], "--output_onnx"),
    ("fine_tuning", ["--resume", "no/such/file.pth"], "--resume"),
    ("advanced_fine_tuning", ["--patience", "0"], "--patience"),
    ("advanced_fine_tuning", ["--pretrained_weights", "no/such.pth"], "--pretrained_weights"),
    ("advanced_pretrained", ["--output_onnx", "x.txt"], "--output_onnx"),
    ("advanced_pretrained", ["--embedding_dim", "1e9"], "--embedding_dim"),
    ("validation_split", ["--val_ratio", "1"], "--val_ratio"),
    ("download_dataset", ["--source", "http://[::1"], "--source"),
    ("download_dataset", ["--source", "https://"], "--source"),
    ("download_dataset", ["--source", "ftp://host/fer.zip"], "--source"),
    ("download_dataset", ["--sha256", "abc"], "--sha256"),
    ("download_dataset", ["--output", ""], "--output"),
    ("fer_common.commands.quantize", ["no/such.onnx", "out.onnx"], "src"),
    ("fer_common.commands.quantize", [str(SHIPPED_ONNX), "out.onnx", "--images", "0"], "--images"),
]


@pytest.mark.parametrize("module, argv, flag", BAD_FLAGS, ids=[f"{m}:{' '.join(a)}" for m, a, _ in BAD_FLAGS])
def test_flags_out_of_range_are_one_line_naming_flag_and_value(module, argv, flag, capsys):
    parser = importlib.import_module(module).get_args_parser()
    line = one_error_line(capsys, lambda: parser.parse_args(argv))
    assert flag in line and (any(a in line for a in argv if a and a != flag) or not argv[-1]), line


def test_argument_types():
    assert cli.positive_int("3") == 3 and cli.probability("1") == 1.0 and cli.camera_index("0") == 0
    assert cli.device_arg("CPU") == "cpu" and cli.detect_width("0") == 0
    for kind, text in [(cli.positive_int, "1.5"), (cli.non_negative_int, "-1"), (cli.positive_float, "-inf"),
                       (cli.fraction, "0"), (cli.camera_index, "100"), (cli.path_arg, " ")]:
        with pytest.raises(argparse.ArgumentTypeError):
            kind(text)


# ---------------------------------------------------------------- outputs: distinct, protected, checked first

def test_two_outputs_with_the_same_path_are_refused(tmp_path, capsys):
    import real_time_video

    same = tmp_path / "out.mp4"
    line = one_error_line(capsys, lambda: run_main(real_time_video.main, real_time_video.get_args_parser(),
                                                   ["--save_output", str(same), "--log_csv", str(same)]))
    assert "output video and CSV log are the same file" in line and not same.exists()
    with pytest.raises(FERError, match="also the input"):
        check_outputs_distinct({"--out": tmp_path / "a" / ".." / "in.mp4"}, inputs={"--video": tmp_path / "in.mp4"})


def train_args(tmp_path, **kw):
    args = dict(output_model=str(tmp_path / "m.pth"), output_onnx=str(tmp_path / "m.onnx"), resume=None,
                overwrite=False)
    args.update(kw)
    return argparse.Namespace(**args)


def test_training_checks_every_file_it_writes_before_the_first_epoch(tmp_path):
    # a new run whose --output_model does not exist yet must not replace m.last.pth or m_metrics.json
    for name in ("m.last.pth", "m_metrics.json"):
        (tmp_path / name).write_text("keep")
        with pytest.raises(FERError, match=f"{name} already exists"):
            training.check_training_outputs(train_args(tmp_path))
        (tmp_path / name).unlink()
    training.check_training_outputs(train_args(tmp_path))
    with pytest.raises(FERError, match="same file"):
        training.check_training_outputs(train_args(tmp_path, output_onnx=str(tmp_path / "m_metrics.json")))
    # an output that cannot be written is found now, not after an hour of training
    (tmp_path / "file").write_text("x")
    with pytest.raises(FERError, match="cannot write"):
        training.check_training_outputs(train_args(tmp_path, output_model=str(tmp_path / "file" / "m.pth")))


def test_resume_continues_its_own_files_but_never_silently_replaces_a_best_model(tmp_path):
    for name in ("m.pth", "m.last.pth", "m_metrics.json", "m.onnx"):
        (tmp_path / name).write_text("old")
    # resuming the run's own last checkpoint: its files continue
    training.check_training_outputs(train_args(tmp_path, resume=str(tmp_path / "m.last.pth")))
    # resuming from the best model that is also the output would replace it with a worse one
    with pytest.raises(FERError, match="--resume .*m.pth is also --output_model"):
        training.check_training_outputs(train_args(tmp_path, resume=str(tmp_path / "m.pth")))
    training.check_training_outputs(train_args(tmp_path, resume=str(tmp_path / "m.pth"), overwrite=True))
    # resuming from some other file: existing outputs are protected as usual
    other = tmp_path / "other.last.pth"
    other.write_text("x")
    with pytest.raises(FERError, match="already exists"):
        training.check_training_outputs(train_args(tmp_path, resume=str(other)))
    assert all((tmp_path / n).read_text() == "old" for n in ("m.pth", "m.last.pth", "m_metrics.json", "m.onnx"))


def test_check_outputs_protects_existing_files(tmp_path):
    (tmp_path / "a.onnx").write_text("x")
    with pytest.raises(FERError, match="already exists: pass --overwrite"):
        check_outputs({"dst": tmp_path / "a.onnx"})
    check_outputs({"dst": tmp_path / "a.onnx"}, overwrite=True)


# ---------------------------------------------------------------- malformed model files

def tiny_checkpoint(**changes) -> dict:
    model = FERNet(widths=(8, 8, 8, 8))
    ckpt = make_checkpoint(model, "default", {"widths": (8, 8, 8, 8)}, sorted(EMOTIONS),
                           default_preprocessing("default"), epoch=1)
    ckpt.update(changes)
    return ckpt


def broken_checkpoints(tmp_path) -> dict:
    good = tiny_checkpoint()
    cases = {}
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    cases["empty"] = (path, "not a readable PyTorch checkpoint")
    save_checkpoint(good, tmp_path / "good.pth")
    path = tmp_path / "truncated.pth"
    path.write_bytes((tmp_path / "good.pth").read_bytes()[:2000])
    cases["truncated"] = (path, "not a readable PyTorch checkpoint")
    specs = {
        "wrong_kind": ([1, 2, 3], "not a FER checkpoint"),
        "missing_state_dict": ({k: v for k, v in good.items() if k != "state_dict"}, "no state_dict"),
        "missing_class_names": ({k: v for k, v in good.items() if k != "class_names"}, "no class_names"),
        "bad_model_type": (tiny_checkpoint(model_type="resnet"), "unknown model type"),
        "class_names_do_not_match": (tiny_checkpoint(class_names=["a", "b", "c"]), "7 outputs, but the file names 3"),
        "duplicate_class_names": (tiny_checkpoint(class_names=["a"] * 7), "repeats a name"),
        "extra_key": (tiny_checkpoint(state_dict={**good["state_dict"], "extra.weight": torch.zeros(2)}),
                      "weights do not fit"),
        "missing_key": (tiny_checkpoint(state_dict={k: v for k, v in list(good["state_dict"].items())[1:]}),
                        "weights do not fit"),
        "unknown_config": (tiny_checkpoint(model_config={"widths": (8, 8, 8, 8), "depth": 3}), "does not build"),
        "bad_preprocessing": (tiny_checkpoint(preprocessing={"input_size": [48], "channels": 1}), "preprocessing"),
        "nan_std": (tiny_checkpoint(preprocessing={**good["preprocessing"], "std": [0.0]}), "std"),
        "state_dict_not_tensors": (tiny_checkpoint(state_dict={"a": 1}), "no weights"),
    }
    for name, (obj, message) in specs.items():
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        cases[name] = (path, message)
    return cases


def test_malformed_checkpoints_name_the_file_and_the_problem(tmp_path):
    for name, (path, message) in broken_checkpoints(tmp_path).items():
        with pytest.raises(FERError, match=message) as e:
            model_from_checkpoint(load_checkpoint(path, "default"), path)
        assert str(path) in str(e.value), name


def test_malformed_checkpoint_through_a_script_is_one_line(tmp_path, capsys):
    import evaluate

    make_folder_dataset(tmp_path / "data", per_class=(1,), splits=("test",))
    path, message = broken_checkpoints(tmp_path)["class_names_do_not_match"]
    line = one_error_line(capsys, lambda: run_main(evaluate.main, evaluate.get_args_parser(),
                                                   ["--data", str(tmp_path / "data" / "test"), "--checkpoint", str(path),
                                                    "--output_dir", str(tmp_path / "eval")]))
    assert str(path) in line and message in line


def edited_onnx(tmp_path, name, **meta) -> Path:
    import onnx

    proto = onnx.load(str(SHIPPED_ONNX))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(meta)
    del proto.metadata_props[:]
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    path = tmp_path / name
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("meta, message", [
    ({"class_names": json.dumps(["a", "b"])}, "graph gives 7 logits per face, but its metadata names 2 classes"),
    ({"class_names": "[not json"}, "class_names metadata is not valid JSON"),
    ({"preprocessing": json.dumps({"input_size": [64, 64], "channels": 1, "mean": [0.5], "std": [0.25]})},
     "graph takes input"),
    ({"model_type": "mystery"}, "unknown model type .mystery."),
])
def test_onnx_whose_metadata_disagrees_with_its_graph(tmp_path, meta, message):
    path = edited_onnx(tmp_path, "m.onnx", **meta)
    with pytest.raises(FERError, match=message) as e:
        Predictor(path)             # reads the metadata (model_info.read_onnx_metadata), then checks the graph
    assert str(path) in str(e.value)


def test_backbone_weights_that_do_not_fit_are_an_error_not_a_warning(tmp_path):
    source = create_backbone("test_vit")
    state = source.state_dict()
    cases = {
        "missing": {k: v for k, v in list(state.items())[2:]},
        "shape": {k: (v[:1] if v.ndim and v.shape[0] > 1 else v) for k, v in state.items()},
        "not_weights": {"epoch": 3},
    }
    for name, obj in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        with pytest.raises(FERError, match="pretrained_weights") as e:
            create_backbone("test_vit", pretrained_weights=str(path))
        assert str(path) in str(e.value), name
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(FERError, match="not a readable weights file"):
        load_backbone_weights(source, tmp_path / "empty.pth")
    # the same weights wrapped as a training checkpoint ({"state_dict": ...}) load
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "wrapped.pth")
    loaded = create_backbone("test_vit", pretrained_weights=str(tmp_path / "wrapped.pth"))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in state.items())


# ---------------------------------------------------------------- images

def png_claiming(width: int, height: int) -> bytes:
    """A valid small PNG whose header is rewritten to claim width x height pixels (CRC fixed up)."""
    data = bytearray(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    ihdr = bytearray(data[12:29])             # "IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_an_image_header_claiming_gigapixels_is_not_decoded(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(200_000, 200_000))
    assert read_image(path, 1) is None and read_image(path, 3) is None
    path.write_bytes(png_claiming(8, 8))
    assert read_image(path, 1) is None or read_image(path, 1).shape == (8, 8)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".jpe", ".webp", ".tif", ".tiff", ".bmp", ".JPG"])
def test_every_usual_extension_is_readable_and_writable(tmp_path, ext):
    assert writable_image_extension(ext.lower())
    ok, data = cv2.imencode(ext.lower(), np.full((16, 16, 3), 90, np.uint8))
    path = tmp_path / f"img{ext}"
    path.write_bytes(data.tobytes())
    assert read_image(path, 3).shape == (16, 16, 3)
    assert cli.image_output(str(tmp_path / f"out{ext}"))


def test_unsupported_output_extensions_are_refused_at_parse_time():
    for bad in ("out.pbm", "out.pgm", "out.xyz.exr"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.image_output(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        cli.video_output("out.gif")


# ---------------------------------------------------------------- silent nonsense in training

def run_train(tmp_path, data, **kw):
    from fine_tuning import get_args_parser

    argv = ["--dataset_path", str(data), "--epochs", "1", "--batch_size", "4", "--num_workers", "0",
            "--output_model", str(tmp_path / "m.pth"), "--output_onnx", str(tmp_path / "m.onnx"),
            "--ema_decay", "0", "--widths", "8,8,8,8"]
    for k, v in kw.items():
        argv += [f"--{k}", str(v)]
    args = get_args_parser().parse_args(argv)
    return training.train(args, "default", {"widths": (8, 8, 8, 8), "embedding_dim": 8, "dropout": 0.0})


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("data"), per_class=(2, 1))


def test_batch_size_above_the_training_images_is_an_error_not_an_empty_run(tmp_path, small_data):
    with pytest.raises(FERError, match="--batch_size 64 is larger than the 14 training images"):
        run_train(tmp_path, small_data, batch_size=64)
    assert not list(tmp_path.glob("m*"))


def test_nan_loss_stops_training_before_saving(tmp_path, small_data, monkeypatch):
    monkeypatch.setattr(training, "train_one_epoch", lambda *a, **k: math.nan)
    with pytest.raises(FERError, match="training diverged at epoch 1"):
        run_train(tmp_path, small_data)
    assert not (tmp_path / "m.pth").exists() and not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------- distributed sharding

@pytest.mark.parametrize("n, world, batch, drop_last", [(11, 2, 3, True), (11, 2, 3, False), (10, 3, 2, True),
                                                        (7, 4, 3, False), (1, 2, 1, False)])
def test_every_rank_gets_the_same_number_of_batches(n, world, batch, drop_last):
    images, labels = torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n)
    counts, seen = [], set()
    for rank in range(world):
        loader = MemoryLoader(images, labels, batch, shuffle=True, seed=3, rank=rank, world_size=world,
                              drop_last=drop_last)
        batches = list(loader)
        assert len(batches) == len(loader)
        counts.append(len(batches))
        seen |= {int(v) for _, y in batches for v in y}
    assert len(set(counts)) == 1, counts            # DDP hangs when ranks differ
    if not drop_last:
        assert seen == set(range(n))                 # padding repeats images, never loses one


# ---------------------------------------------------------------- the last resort

def test_unexpected_exception_is_still_one_line(capsys):
    def main(args):
        raise ValueError("boom\nsecond line")

    line = one_error_line(capsys, lambda: run_main(main, cli.make_parser("x"), []))
    assert line == "error: unexpected ValueError: boom (please report)"
