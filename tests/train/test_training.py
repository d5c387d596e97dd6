import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fer_common.model.checkpoint import load_checkpoint
from fer_common.cli import run_main
from fer_common.datasets.folders import list_samples
from fer_common.train.loaders import MemoryLoader, load_into_memory
from fer_common.train.early_stopping import EarlyStopping
from fer_common.labels import EMOTIONS
from fer_common.model.networks import FERNet, default_preprocessing
from fer_common.train.data import class_weights
from helpers_models import train_briefly
from synthetic import REPO, make_folder_dataset, run_script

TINY = ["--epochs", "2", "--batch_size", "8", "--num_workers", "0"]


# ---------------------------------------------------------------- early stopping rules

def statuses(losses, patience, extra):
    stopper = EarlyStopping(patience, extra)
    return [stopper.step(v) for v in losses]


def test_early_stopping_confirms_with_extra_epochs():
    assert statuses([1.0, 0.9, 0.95, 0.96, 0.97, 0.98], patience=2, extra=2) == \
        ["improved", "improved", "waiting", "patience_out", "confirming", "stop"]


def test_improvement_during_confirmation_resumes_training():
    assert statuses([1.0, 1.1, 1.2, 0.8, 0.9, 0.9, 0.9, 0.9], patience=2, extra=2) == \
        ["improved", "waiting", "patience_out", "resumed", "waiting", "patience_out", "confirming", "stop"]


def test_no_extra_epochs_stops_when_patience_runs_out():
    assert statuses([1.0, 1.1, 1.2], patience=2, extra=0) == ["improved", "waiting", "stop"]


def test_early_stopping_state_round_trip():
    a = EarlyStopping(3, 2)
    for v in (1.0, 1.2, 1.3, 1.4):
        a.step(v)
    b = EarlyStopping(3, 2)
    b.load_state_dict(a.state_dict())
    assert [a.step(1.5), a.step(1.5)] == [b.step(1.5), b.step(1.5)] == ["confirming", "stop"]


# ---------------------------------------------------------------- the loop itself

def test_class_weights_favour_rare_classes():
    labels = torch.tensor([0] * 90 + [1] * 10)
    w = class_weights(labels, 2, "balanced")
    assert w[1] > w[0]
    assert torch.isclose((w[labels]).mean(), torch.tensor(1.0))
    assert class_weights(labels, 2, "none") is None


def test_default_model_loss_falls(tiny_data):
    torch.manual_seed(0)
    prep = default_preprocessing("default")
    samples, names = list_samples(tiny_data / "train_new")
    images, labels, bad = load_into_memory(samples, prep["input_size"], 1, quiet=True)
    assert images.dtype == torch.uint8 and images.shape == (len(samples), 1, 48, 48) and not bad
    before, after, preds, targets = train_briefly(FERNet(), tiny_data)
    assert after < before * 0.85
    assert len(preds) == len(targets) == len(samples)


def test_memory_loader_shards_between_processes():
    images, labels = torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10)
    seen = []
    for rank in (0, 1):
        loader = MemoryLoader(images, labels, 3, shuffle=True, seed=1, rank=rank, world_size=2)
        seen += [int(v) for _, y in loader for v in y]
    assert sorted(seen) == list(range(10))


# ---------------------------------------------------------------- the scripts as a user types them

def test_fine_tuning_end_to_end_and_resume(tiny_data, tmp_path):
    out = tmp_path / "fer_model.pth"
    onnx = tmp_path / "fer_model.onnx"
    args = ["--dataset_path", tiny_data, *TINY, "--output_model", out, "--output_onnx", onnx]
    r = run_script("fine_tuning.py", *args)
    assert r.returncode == 0, r.stderr
    for field in ("train_loss", "val_loss", "val_acc", "lr", "improvement"):
        assert field in r.stdout
    assert r.stdout.count("epoch   ") == 2
    assert "ONNX check: max |logits diff|" in r.stdout
    ckpt = load_checkpoint(out, expected_type="default")
    assert ckpt["class_names"] == sorted(EMOTIONS)          # folder order, stored as trained
    assert ckpt["preprocessing"]["input_size"] == [48, 48] and "optimizer" not in ckpt
    metrics = json.loads((tmp_path / "fer_model_metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert onnx.is_file() and (tmp_path / "fer_model.last.pth").is_file()

    # The same command again would replace the user's model: refused without --overwrite.
    r = run_script("fine_tuning.py", *args)
    assert r.returncode == 1 and "already exists" in r.stderr and "Traceback" not in r.stderr

    r = run_script("fine_tuning.py", *args, "--epochs", "3", "--resume", tmp_path / "fer_model.last.pth")
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout and "epoch   3/3" in r.stdout and "epoch   1/3" not in r.stdout
    metrics = json.loads((tmp_path / "fer_model_metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "fer_model.last.pth")["epoch"] == 3


def test_advanced_fine_tuning_small_backbone(tiny_data, tmp_path):
    r = run_script("advanced_fine_tuning.py", "--dataset_path", tiny_data, "--backbone", "test_vit", "--no_pretrained",
                   "--epochs", "1", "--batch_size", "8", "--num_workers", "0",
                   "--output_model", tmp_path / "adv.pth", "--output_onnx", tmp_path / "adv.onnx")
    assert r.returncode == 0, r.stderr
    ckpt = load_checkpoint(tmp_path / "adv.pth", expected_type="advanced")
    assert ckpt["model_config"]["backbone"] == "test_vit" and ckpt["preprocessing"]["channels"] == 3
    assert (tmp_path / "adv.onnx").is_file()

    # A checkpoint of the other model type cannot be resumed by fine_tuning.py.
    r = run_script("fine_tuning.py", "--dataset_path", tiny_data, *TINY, "--resume", tmp_path / "adv.pth",
                   "--output_model", tmp_path / "d.pth", "--output_onnx", tmp_path / "d.onnx")
    assert r.returncode == 1 and "holds a 'advanced' model, not 'default'" in r.stderr


def test_advanced_pretrained_script(tmp_path):
    r = run_script("advanced_pretrained.py", "--backbone", "test_vit", "--no_pretrained",
                   "--output_checkpoint", tmp_path / "a.pth", "--output_onnx", tmp_path / "a.onnx")
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(tmp_path / "a.pth", expected_type="advanced")["epoch"] == 0
    r = run_script("advanced_pretrained.py", "--backbone", "no_such_net", "--no_pretrained",
                   "--output_checkpoint", tmp_path / "b.pth", "--output_onnx", tmp_path / "b.onnx")
    assert r.returncode == 1 and "timm does not know the backbone 'no_such_net'" in r.stderr


def _expect_error(tmp_path, data, message):
    r = run_script("fine_tuning.py", "--dataset_path", data, *TINY,
                   "--output_model", tmp_path / "m.pth", "--output_onnx", tmp_path / "m.onnx")
    assert r.returncode == 1, r.stdout
    assert message in r.stderr and "Traceback" not in r.stderr
    return r


def test_missing_split_says_to_run_validation_split(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    _expect_error(tmp_path, tmp_path / "data", "validation_split.py")


def test_class_folders_differ_between_train_and_val(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_class=(3, 1))
    for f in (data / "val_new" / "Disgust").iterdir():
        f.unlink()
    (data / "val_new" / "Disgust").rmdir()
    _expect_error(tmp_path, data, "missing: Disgust")


def test_empty_class_folder(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_class=(3, 1))
    for f in (data / "train_new" / "Fear").iterdir():
        f.unlink()
    _expect_error(tmp_path, data, "Fear has no images")


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_class=(3, 1))
    (data / "train_new" / "Happy" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    r = run_script("fine_tuning.py", "--dataset_path", data, "--epochs", "1", "--batch_size", "4",
                   "--num_workers", "0", "--output_model", tmp_path / "m.pth", "--output_onnx", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    assert "skipped 1 unreadable image(s)" in r.stdout and "broken.jpg" in r.stdout


def test_torchrun_two_processes_gloo(tiny_data, tmp_path):
    from fer_common.datasets import ferplus

    # With a FER+ vote head, whose gradients the processes average themselves (DDP does not see the head).
    column = dict(zip(ferplus.COLUMN_CLASSES, ferplus.VOTE_COLUMNS))
    images = sorted((tiny_data / "train_new").glob("*/*.png"))
    ferplus.write_votes(tmp_path / "votes.csv", [f"train/{p.parent.name}/{p.name}" for p in images],
                        [[8.0 * (c == column[p.parent.name]) for c in ferplus.VOTE_COLUMNS] for p in images])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "fine_tuning.py"), "--dataset_path", str(tiny_data), "--epochs", "1", "--batch_size", "8",
           "--num_workers", "0", "--device", "cpu", "--vote_head", str(tmp_path / "votes.csv"),
           "--output_model", str(tmp_path / "ddp.pth"), "--output_onnx", str(tmp_path / "ddp.onnx")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "x 2 processes" in r.stdout and f"vote head: {len(images)} of {len(images)} train images" in r.stdout
    assert "vote_head" in load_checkpoint(tmp_path / "ddp.last.pth")
    assert r.stdout.count("epoch   1/1") == 1                          # only rank 0 reports
    ckpt = load_checkpoint(tmp_path / "ddp.pth", expected_type="default")
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert (tmp_path / "ddp.onnx").is_file()


def test_streaming_loader_trains_too(tiny_data, tmp_path):
    r = run_script("fine_tuning.py", "--dataset_path", tiny_data, "--epochs", "1", "--batch_size", "8", "--num_workers", "0",
                   "--no_cache", "--output_model", tmp_path / "m.pth", "--output_onnx", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    assert "streamed from disk" in r.stdout and (tmp_path / "m.onnx").is_file()


def test_streaming_batches_keep_their_size_around_unreadable_images():
    from fer_common.train.loaders import collate_skip_unreadable

    good = (torch.zeros(1, 48, 48, dtype=torch.uint8), 3)
    images, labels = collate_skip_unreadable([good, None, (torch.ones(1, 48, 48, dtype=torch.uint8), 5), None])
    assert images.shape == (4, 1, 48, 48) and labels.tolist() == [3, 5, 3, 5]
    images, labels = collate_skip_unreadable([None, None])
    assert len(images) == len(labels) == 0


# ---------------------------------------------------------------- a full disk while training (issue 18)

class _FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are written, as a full disk's do."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _fill_disk(monkeypatch, what: str):
    """Make the training run's checkpoint writes (torch.save into its file) or history writes fail with ENOSPC."""
    if what == "checkpoint":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)):
                with open(f, "wb") as real:
                    return real_save(obj, _FullDisk(real, 1024), *args, **kwargs)
            return real_save(obj, _FullDisk(f, 1024), *args, **kwargs)

        monkeypatch.setattr(torch, "save", save)
    else:
        real_write_text = Path.write_text

        def write_text(self, *args, **kwargs):
            if self.name.startswith(".m_metrics") or self.name.startswith("m_metrics"):
                real_write_text(self, "{\"half", encoding="utf-8")     # a partial write, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write_text(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)


@pytest.mark.parametrize("what", [
    # torch.save turns the file's OSError into a RuntimeError (its __context__): files.save_torch says it in words.
    "checkpoint", "history"])
def test_full_disk_while_training_is_one_error_line_and_no_partial_file(tiny_data, tmp_path, monkeypatch, capsys, what):
    import fine_tuning

    out = tmp_path / "out"
    argv = ["--dataset_path", str(tiny_data), "--epochs", "1", "--batch_size", "8", "--num_workers", "0",
            "--widths", "8,8,8,8", "--ema_decay", "0", "--output_model", str(out / "m.pth"),
            "--output_onnx", str(out / "m.onnx")]
    _fill_disk(monkeypatch, what)
    with pytest.raises(SystemExit) as e:
        run_main(fine_tuning.main, fine_tuning.get_args_parser(), argv)
    monkeypatch.undo()
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert e.value.code == 1 and "Traceback" not in err, err
    # Nothing half-written: no temporary file, no history; a checkpoint there is whole (and resumable).
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    if what == "checkpoint":
        assert left == []
    else:
        assert left == ["m.last.pth", "m.pth"]
        assert load_checkpoint(out / "m.last.pth")["epoch"] == 1 and load_checkpoint(out / "m.pth")["epoch"] == 1
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert "No space left on device" in errors[0] and "unexpected" not in errors[0], errors[0]
