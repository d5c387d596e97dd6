"""Training recipes (weight EMA, mixup, distillation from teachers) and model ensembles."""

import argparse

import numpy as np
import pytest
import torch

from fer_common.model.checkpoint import load_checkpoint
from fer_common.labels import EMOTIONS
from fer_common.model.networks import FERNet, default_preprocessing
from fer_common.model_info import read_onnx_metadata
from fer_common.infer.predictor import Ensemble, Predictor, add_predictor_args, predictor_from_args
from fer_common.train.recipes import ModelEma, Teachers, distillation_loss, mix_batch
from helpers_models import PERMUTED, save_default, train_briefly
from synthetic import run_script

SMALL = ["--widths", "8,16,16,32", "--epochs", "2", "--batch_size", "8", "--num_workers", "0"]


def test_ema_follows_the_model_with_warm_up():
    model = torch.nn.Linear(2, 1)
    ema = ModelEma(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    before = ema.module.weight.clone()
    ema.update(model)   # first update: decay min(0.9, 2/11) -> mostly the new weights
    expected = before + (1.0 - before) * (1 - 2 / 11)
    assert torch.allclose(ema.module.weight, expected)
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.module.weight, torch.ones_like(model.weight), atol=1e-6)
    assert not any(p.requires_grad for p in ema.module.parameters())
    restored = ModelEma(torch.nn.Linear(2, 1), 0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == ema.updates and torch.equal(restored.module.weight, ema.module.weight)


def test_mixup_blends_pairs():
    torch.manual_seed(0)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    y = torch.arange(4)
    mixed, ya, yb, lam = mix_batch(x, y, alpha=0.4)
    assert 0 <= lam <= 1 and torch.equal(ya, y)
    # each mixed image is lam * its own + (1 - lam) * its partner's (the partner is named by yb)
    assert torch.allclose(mixed[:, 0, 0, 0], lam * y.float() + (1 - lam) * yb.float())


def test_distillation_loss_is_zero_when_student_matches_teacher():
    logits = torch.randn(5, 7)
    soft = torch.softmax(logits / 4.0, dim=1)
    assert distillation_loss(logits, soft, 4.0).abs() < 1e-5
    assert distillation_loss(torch.zeros(5, 7), soft, 4.0) > 0


def test_teachers_average_their_softened_probabilities(tmp_path):
    a = save_default(tmp_path / "a.pth", seed=1)
    b = save_default(tmp_path / "b.pth", seed=2)
    prep = default_preprocessing("default")
    teachers = Teachers([tmp_path / "a.pth", tmp_path / "b.pth"], EMOTIONS, prep, torch.device("cpu"), temperature=2.0)
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        expected = (torch.softmax(a(x)[0] / 2, 1) + torch.softmax(b(x)[0] / 2, 1)) / 2
    soft = teachers.soft_targets(x)
    assert torch.allclose(soft, expected, atol=1e-5)
    assert not soft.is_inference()    # usable in the student's loss


def test_teachers_with_mirror_tta_average_each_face_and_its_mirror(tmp_path):
    a = save_default(tmp_path / "a.pth", seed=1)
    teachers = Teachers([tmp_path / "a.pth"], EMOTIONS, default_preprocessing("default"), torch.device("cpu"),
                        temperature=2.0, mirror=True)
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        expected = (torch.softmax(a(x)[0] / 2, 1) + torch.softmax(a(x.flip(-1))[0] / 2, 1)) / 2
    assert torch.allclose(teachers.soft_targets(x), expected, atol=1e-5)


def test_teacher_with_other_classes_is_refused(tmp_path):
    save_default(tmp_path / "p.pth", class_names=["A", "B", "C"])
    with pytest.raises(Exception, match="has classes .* which lack"):
        Teachers([tmp_path / "p.pth"], EMOTIONS, default_preprocessing("default"), torch.device("cpu"))


def test_teacher_with_more_classes_teaches_the_students_by_name(tmp_path):
    """An 8-class FER+ teacher (Contempt, its own order) teaches a 7-class student: columns matched by name,
    Contempt dropped, probabilities renormalised over the student's classes."""
    ferplus = ["neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt"]
    teacher = save_default(tmp_path / "t.pth", class_names=ferplus, seed=4)
    student = sorted(EMOTIONS)
    teachers = Teachers([tmp_path / "t.pth"], student, default_preprocessing("default"), torch.device("cpu"),
                        temperature=2.0)
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        logits = teacher(x)[0]
    columns = [ferplus.index(name.lower()) for name in student]
    expected = torch.softmax(logits / 2, 1)[:, columns]
    expected = expected / expected.sum(1, keepdim=True)
    soft = teachers.soft_targets(x)
    assert soft.shape == (3, 7) and torch.allclose(soft, expected, atol=1e-5)


def test_distilled_student_loss_falls(tiny_data, tmp_path):
    """A student trained on labels and a teacher's soft labels learns (its validation loss falls)."""
    torch.manual_seed(0)
    names = sorted(EMOTIONS)
    save_default(tmp_path / "teacher.pth", class_names=names, seed=3)
    teachers = Teachers([tmp_path / "teacher.pth"], names, default_preprocessing("default"), torch.device("cpu"),
                        temperature=4.0)
    model = FERNet(widths=(8, 16, 16, 32))
    ema = ModelEma(model, 0.9)
    before, after, _, _ = train_briefly(model, tiny_data, 15, ema=ema, mixup=0.2, teachers=teachers, distill_weight=0.5)
    assert after < before * 0.85
    assert ema.updates == 15 * (7 * 8 // 16)      # one update per batch: 56 images in batches of 16


def test_fine_tuning_with_ema_and_teachers_as_typed(tiny_data, tmp_path):
    teacher = tmp_path / "teacher.pth"
    r = run_script("fine_tuning.py", "--dataset_path", tiny_data, *SMALL, "--output_model", teacher,
                   "--output_onnx", tmp_path / "teacher.onnx")
    assert r.returncode == 0, r.stderr
    assert "EMA 0.999" in r.stdout
    last = load_checkpoint(tmp_path / "teacher.last.pth")
    best = load_checkpoint(teacher)
    assert "ema" in last and "ema" not in best
    # calibrated at the end on the validation split: in the checkpoint and in the ONNX metadata
    assert "calibration: temperature" in r.stdout
    assert best["calibration"]["temperature"] == read_onnx_metadata(tmp_path / "teacher.onnx")["calibration"]["temperature"]
    # the best file holds the validated (EMA) weights, not the live ones
    epoch_ema = last["ema"]["weights"]
    if best["epoch"] == last["epoch"]:
        assert all(torch.equal(best["state_dict"][k], epoch_ema[k]) for k in epoch_ema)

    r = run_script("fine_tuning.py", "--dataset_path", tiny_data, *SMALL, "--teacher", teacher, "--teacher", teacher,
                   "--distill_weight", "0.5", "--mixup", "0.2", "--augmentation", "broad", "--teacher_tta",
                   "--output_model", tmp_path / "student.pth",
                   "--output_onnx", tmp_path / "student.onnx")
    assert r.returncode == 0, r.stderr
    assert "distilling from 2 teacher(s)" in r.stdout and (tmp_path / "student.onnx").is_file()
    assert "augmentation broad" in r.stdout and "with mirror TTA" in r.stdout
    assert load_checkpoint(tmp_path / "student.pth")["args"]["augmentation"] == "broad"   # the recipe is recorded


@pytest.mark.parametrize("flags", [["--teacher_tta"], ["--distill_weight", "0.5"], ["--distill_temperature", "2"]])
def test_distillation_flags_without_a_teacher_are_refused(tiny_data, tmp_path, flags):
    r = run_script("fine_tuning.py", "--dataset_path", tiny_data, *SMALL, *flags, "--output_model", tmp_path / "m.pth",
                   "--output_onnx", tmp_path / "m.onnx")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"{flags[0]} needs --teacher" in r.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.iterdir())              # refused before any file is written


def test_ensemble_averages_probabilities_in_class_order(tmp_path):
    save_default(tmp_path / "a.pth", seed=1)
    save_default(tmp_path / "b.pth", class_names=PERMUTED, seed=2)
    a, b = Predictor(tmp_path / "a.pth"), Predictor(tmp_path / "b.pth")
    ensemble = Ensemble([a, b])
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (60, 50, 3), dtype=np.uint8) for _ in range(3)]
    pa, pb = a(crops), b(crops)
    pb_in_a_order = pb.probabilities[:, [PERMUTED.index(c) for c in a.class_names]]
    result = ensemble(crops)
    assert ensemble.class_names == a.class_names
    np.testing.assert_allclose(result.probabilities, (pa.probabilities + pb_in_a_order) / 2, atol=1e-6)
    np.testing.assert_allclose(result.embeddings, pa.embeddings)


def test_ensemble_of_different_classes_is_refused(tmp_path):
    save_default(tmp_path / "a.pth")
    save_default(tmp_path / "c.pth", class_names=["A", "B", "C"])
    with pytest.raises(Exception, match="same classes"):
        Ensemble([Predictor(tmp_path / "a.pth"), Predictor(tmp_path / "c.pth")])


def test_checkpoint_flag_takes_several_files_and_tta_defaults(tmp_path):
    save_default(tmp_path / "a.pth", seed=1)
    save_default(tmp_path / "b.pth", seed=2)
    for tta_default in (True, False):
        parser = argparse.ArgumentParser()
        add_predictor_args(parser, tta=tta_default)
        args = parser.parse_args(["--checkpoint", str(tmp_path / "a.pth"), str(tmp_path / "b.pth"), "--device", "cpu"])
        assert args.tta is tta_default
        predictor = predictor_from_args(args, log=lambda *a: None)
        assert isinstance(predictor, Ensemble) and len(predictor.members) == 2
        assert all(m.tta is tta_default for m in predictor.members)
    assert parser.parse_args(["--tta"]).tta and not parser.parse_args(["--no_tta"]).tta


def test_evaluate_averages_two_checkpoints(tiny_data, tmp_path):
    save_default(tmp_path / "a.pth", seed=1)
    save_default(tmp_path / "b.pth", seed=2)
    r = run_script("evaluate.py", "--data", tiny_data / "val_new", "--checkpoint", tmp_path / "a.pth",
                   tmp_path / "b.pth", "--output_dir", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    assert "ensemble of 2" in r.stdout and (tmp_path / "eval" / "metrics.json").is_file()


def test_evaluate_reports_calibration_of_a_calibrated_model(tiny_data, tmp_path):
    from fer_common.model.checkpoint import save_checkpoint
    import json

    save_default(tmp_path / "m.pth", class_names=sorted(EMOTIONS))
    ckpt = load_checkpoint(tmp_path / "m.pth")
    ckpt["calibration"] = {"temperature": 2.0}
    save_checkpoint(ckpt, tmp_path / "m.pth")
    r = run_script("evaluate.py", "--data", tiny_data / "val_new", "--checkpoint", tmp_path / "m.pth",
                   "--output_dir", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    assert "expected calibration error" in r.stdout and "uncalibrated" in r.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["calibration"]["temperature"] == 2.0 and "ece_uncalibrated" in metrics["calibration"]
    assert (tmp_path / "eval" / "reliability.png").is_file()
