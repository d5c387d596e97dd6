import cv2
import numpy as np
import pytest
import torch

from fer_common.model.checkpoint import load_checkpoint
from fer_common.cli import FERError
from fer_common.labels import EMOTIONS
from fer_common.infer import predictor as predictor_module
from fer_common.infer.predictor import Predictor, resolve_model_file
from fer_common.runtime import onnx_providers
from helpers_models import PERMUTED, save_advanced


def faces(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(rng.integers(40, 120)), int(rng.integers(40, 120)), 3), dtype=np.uint8)
            for _ in range(n)]


def test_pth_and_onnx_agree(models):
    crops = faces(5)
    a, b = Predictor(models / "fer_model.pth", device="cpu"), Predictor(models / "fer_model.onnx", provider="cpu")
    assert (a.runtime, b.runtime) == ("torch", "onnx")
    assert a.class_names == b.class_names == EMOTIONS and a.model_type == b.model_type == "default"
    pa, ea = a(crops)
    pb, eb = b(crops)
    assert pa.shape == (5, 7) and ea.shape == (5, 128) and pa.dtype == np.float32
    np.testing.assert_allclose(pa.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(pa, pb, atol=1e-4)
    np.testing.assert_allclose(ea, eb, atol=1e-3)


@pytest.mark.parametrize("name", ["fer_model.pth", "fer_model.onnx"])
def test_batch_equals_single_calls(models, name):
    p = Predictor(models / name, provider="cpu", device="cpu")
    crops = faces(4, seed=1) + [np.full((60, 60), 128, np.uint8)]    # a gray crop too
    probs, emb = p(crops)
    for i, crop in enumerate(crops):
        one_p, one_e = p([crop])
        np.testing.assert_allclose(probs[i], one_p[0], atol=1e-5)
        np.testing.assert_allclose(emb[i], one_e[0], atol=1e-4)
    empty_p, empty_e = p([])
    assert empty_p.shape == (0, 7) and empty_e.shape == (0, 128)


def test_tta_averages_crop_and_mirror(models):
    crops = faces(3, seed=2)
    plain, tta = Predictor(models / "fer_model.pth"), Predictor(models / "fer_model.pth", tta=True)
    p, _ = plain(crops)
    mirrored, _ = plain([c[:, ::-1] for c in crops])
    probs, emb = tta(crops)
    np.testing.assert_allclose(probs, (p + mirrored) / 2, atol=1e-5)
    assert emb.shape == (3, 128)


def test_views_are_opencvs_zoom_and_reflected_shift():
    from fer_common.infer import tta

    rng = np.random.default_rng(4)
    batch = rng.random((3, 2, 48, 40)).astype(np.float32)          # N, C, H, W
    for n, c in ((0, 0), (2, 1)):
        plane = batch[n, c]
        moved = cv2.warpAffine(plane, np.float32([[1, 0, -2], [0, 1, 2]]), (40, 48), borderMode=cv2.BORDER_REFLECT)
        np.testing.assert_array_equal(tta.shift(batch, -2, 2)[n, c], moved)
        ch, cw = round(48 * 0.9), round(40 * 0.9)
        y, x = (48 - ch) // 2, (40 - cw) // 2
        zoomed = cv2.resize(plane[y:y + ch, x:x + cw], (40, 48), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(tta.zoom(batch, 0.9)[n, c], zoomed, atol=1e-5)
    big = rng.random((300, 2, 8, 8)).astype(np.float32)             # past OpenCV's 512 channels a call
    np.testing.assert_allclose(tta.zoom(big, 0.75)[-1, -1], cv2.resize(big[-1, -1, 1:7, 1:7], (8, 8)), atol=1e-5)
    assert [len(tta.view_names(t)) for t in (False, True, 1, 2, 4, 10)] == [1, 2, 1, 2, 4, 10]
    assert tta.tta_setting(2) is True and tta.tta_setting(1) is False and tta.tta_setting(10) == 10
    with pytest.raises(FERError, match="takes 1, 2, 4, 10 views"):
        tta.view_names(3)


def test_more_views_average_what_each_view_says(models):
    from fer_common.infer import tta

    crops = faces(3, seed=5)
    plain, ten = Predictor(models / "fer_model.onnx"), Predictor(models / "fer_model.onnx", tta=10)
    batch = np.stack([cv2.resize(cv2.cvtColor(c, cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
                      for c in crops])[:, None]
    expected = np.mean([plain(list(tta.VIEWS[v](batch.astype(np.float32))[:, 0])).probabilities
                        for v in tta.VIEW_SETS[10]], axis=0)
    probs, emb = ten(crops)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(emb, plain(crops).embeddings, atol=1e-5)      # the crop's own embedding
    assert "TTA of 10 views" in ten.describe() and ten.tta == 10


def test_class_order_from_file_is_honoured(tmp_path, models):
    ckpt = load_checkpoint(models / "fer_model.pth")
    # The same weights with the output order declared permuted: the named probabilities follow the file.
    ckpt["class_names"] = PERMUTED
    torch.save(ckpt, tmp_path / "permuted.pth")
    crops = faces(2, seed=3)
    base, perm = Predictor(models / "fer_model.pth"), Predictor(tmp_path / "permuted.pth")
    assert perm.class_names == PERMUTED
    pb, _ = base(crops)
    pp, _ = perm(crops)
    for k, name in enumerate(PERMUTED):
        np.testing.assert_allclose(pp[:, perm.class_names.index(name)], pb[:, k], atol=1e-6)


def test_wrong_model_type(models):
    with pytest.raises(FERError, match="not 'advanced'"):
        Predictor(models / "fer_model.pth", "advanced")
    with pytest.raises(FERError, match="not 'advanced'.*--model_type default"):
        Predictor(models / "fer_model.onnx", "advanced")


def test_advanced_tiny_backbone(tmp_path):
    save_advanced(tmp_path / "adv.pth")
    p = Predictor(tmp_path / "adv.pth", "advanced")
    probs, emb = p(faces(2))
    assert p.model_type == "advanced" and probs.shape == (2, 7) and emb.shape == (2, 128)


def test_providers_only_gpu_when_usable(monkeypatch):
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert onnx_providers("auto") == ["CPUExecutionProvider"]    # onnxruntime-gpu lists CUDA regardless
    with pytest.raises(FERError, match="--provider cuda"):
        onnx_providers("cuda")
    # --device cuda with an ONNX model asks for the GPU as --provider cuda does: refused, not silently the CPU
    for device in ("cuda", "cuda:0"):
        with pytest.raises(FERError, match=rf"^--device {device}: no CUDA GPU is visible \(use --device auto or cpu\)$"):
            onnx_providers("auto", device)


def test_fer_analyse_device_cuda_without_a_gpu_is_one_line(tmp_path):
    from fer_common.device import cuda_available
    from helpers_models import TEST_IMAGE
    if cuda_available():
        pytest.skip("this machine has a CUDA GPU")
    import os
    import subprocess
    import sys
    from synthetic import REPO
    r = subprocess.run([sys.executable, "-m", "fer_common", "analyse", str(TEST_IMAGE), "--device", "cuda"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: --device cuda: no CUDA GPU is visible (use --device auto or cpu)"], r.stderr


def test_resolve_model_file_is_one_rule(tmp_path, monkeypatch):
    # named > trained here > shipped, with the reason printed; the API looks in no folder (here=None)
    monkeypatch.setattr(predictor_module, "SHIPPED_MODELS_DIR", tmp_path / "models")
    with pytest.raises(FERError) as e:
        resolve_model_file("default", here=tmp_path)
    assert "fer_model.pth" in str(e.value) and "fine_tuning.py" in str(e.value)
    with pytest.raises(FERError, match="advanced_pretrained.py"):
        resolve_model_file("advanced", use_onnx=True, here=tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "fer_model.int8.onnx").write_bytes(b"x")
    assert resolve_model_file("default", use_onnx=True, here=tmp_path) == (tmp_path / "models" / "fer_model.int8.onnx",
                                                                           "shipped")
    (tmp_path / "fer_model.onnx").write_bytes(b"x")
    path, why = resolve_model_file("default", use_onnx=True, here=tmp_path)
    assert path == tmp_path / "fer_model.onnx" and why.startswith("trained here")
    assert resolve_model_file("default", use_onnx=True, here=None)[0].name == "fer_model.int8.onnx"
    assert resolve_model_file(checkpoint="default", here=tmp_path)[0].name == "fer_model.int8.onnx"
    with pytest.raises(FERError, match="model file not found"):
        resolve_model_file("default", checkpoint=tmp_path / "nope.pth")


def test_a_pth_trained_here_without_torch_is_passed_over_with_a_word(tmp_path, monkeypatch):
    monkeypatch.setattr(predictor_module, "_torch_installed", lambda: False)
    (tmp_path / "fer_model.pth").write_bytes(b"x")
    path, why = resolve_model_file("default", here=tmp_path)
    assert path.name == "fer_model.int8.onnx" and "needs PyTorch" in why and "fer-toolkit[train]" in why


def test_building_a_predictor_leaves_the_process_alone(tmp_path):
    import torch
    from helpers_models import save_default

    save_default(tmp_path / "m.pth")
    before = torch.get_num_threads()
    predictor = Predictor(tmp_path / "m.pth", device="cpu")
    assert torch.get_num_threads() == before          # the script decides: predictor.set_threads()
    assert predictor.prefers_one_thread


def test_inference_resizes_as_training_does():
    """A 224 px model sees a face through the training cache size (112) in inference too."""
    import cv2
    import numpy as np
    import torch
    from fer_common.preprocess import ADVANCED_PREPROCESSING, normalize, prepare_batch, resize

    rng = np.random.default_rng(0)
    crop = cv2.GaussianBlur(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), (5, 5), 0)   # RGB face crop
    cached = resize(crop, [112, 112])                                      # what training caches
    trained = normalize(torch.from_numpy(cached).permute(2, 0, 1)[None], ADVANCED_PREPROCESSING)[0].numpy()
    inferred = prepare_batch([crop], ADVANCED_PREPROCESSING, bgr=False)[0]
    assert np.abs(trained - inferred).mean() < 0.006     # 48 -> 224 in one step differs by 0.008
