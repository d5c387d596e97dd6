"""The trained default model that ships in models/: it loads, its two files agree, and the demo works."""

import json

import cv2
import numpy as np

from fer_common.model.checkpoint import load_checkpoint
from fer_common.infer.detection import FaceDetector, crop_faces
from fer_common.labels import EMOTIONS
from fer_common.model_info import read_onnx_metadata
from fer_common.infer.predictor import Predictor
from synthetic import REPO, run_script

MODELS = REPO / "models"
TEST_IMAGE = REPO / "Test_files" / "IMG_test_1.jpg"


def test_shipped_files_load_and_are_small():
    pth, onnx = MODELS / "fer_model.pth", MODELS / "fer_model.onnx"
    for path in (pth, onnx):
        assert path.stat().st_size < 10 * 2**20, f"{path} is over 10 MB"
    ckpt = load_checkpoint(pth, expected_type="default")
    assert sorted(ckpt["class_names"]) == sorted(EMOTIONS)
    assert ckpt["preprocessing"]["input_size"] == [48, 48] and ckpt["preprocessing"]["channels"] == 1
    assert "optimizer" not in ckpt                      # an inference file, not a training state
    meta = read_onnx_metadata(onnx)
    assert meta["class_names"] == ckpt["class_names"] and meta["preprocessing"] == ckpt["preprocessing"]
    # The shipped model is a weight average (`fer average`): its history file lists the same ingredients,
    # each with its training history, and the weights sum to 1.
    history = json.loads((MODELS / "fer_model_metrics.json").read_text())
    ingredients = ckpt["averaged_from"]
    assert [(i["file"], i["weight"]) for i in history["averaged_from"]] == [(i["file"], i["weight"]) for i in ingredients]
    assert abs(sum(i["weight"] for i in ingredients) - 1) < 1e-9
    for ingredient, row in zip(ingredients, history["averaged_from"]):
        assert row["best"]["epoch"] == ingredient["epoch"] and ingredient["args"]["seed"] >= 0


def test_pytorch_and_onnx_agree_on_real_and_random_faces():
    image = cv2.imread(str(TEST_IMAGE))
    boxes = FaceDetector().detect(image)
    assert len(boxes) >= 1
    rng = np.random.default_rng(0)
    crops = crop_faces(image, boxes) + [rng.integers(0, 256, (60, 50, 3), dtype=np.uint8) for _ in range(5)]
    torch_probs = Predictor(MODELS / "fer_model.pth").predict(crops).probabilities
    onnx_probs = Predictor(MODELS / "fer_model.onnx").predict(crops).probabilities
    np.testing.assert_allclose(torch_probs, onnx_probs, atol=1e-4)
    # The int8 model (live video) is close, not equal: same top emotion on the real faces.
    int8_probs = Predictor(MODELS / "fer_model.int8.onnx").predict(crops).probabilities
    assert np.allclose(int8_probs.sum(1), 1, atol=1e-4)
    faces = len(boxes)
    assert (int8_probs[:faces].argmax(1) == torch_probs[:faces].argmax(1)).all()


def test_demo_uses_the_shipped_model(tmp_path):
    # Run from an empty folder: no fer_model.pth of the user's, so the shipped one is used.
    r = run_script("inference.py", TEST_IMAGE, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "models/fer_model.int8.onnx" in r.stderr     # the fast shipped model, as for bulk runs
    faces = json.loads(r.stdout)[0]["faces"]
    assert len(faces) >= 1
    probabilities = faces[0]["probabilities"]
    assert sorted(probabilities) == sorted(EMOTIONS)
    assert abs(sum(probabilities.values()) - 1) < 1e-4 and all(0 <= p <= 1 for p in probabilities.values())

    r = run_script("inference.py", TEST_IMAGE, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    shown = [float(line.split()[1].rstrip("%")) for line in r.stdout.splitlines()
             if line.strip() and line.split()[0] in EMOTIONS]
    assert len(shown) == 7 and shown == sorted(shown, reverse=True)


def test_shipped_model_keeps_the_runtime_budget_and_its_metadata():
    """Issue 22's budget: at most 2.5 M parameters; all three files describe the same model."""
    from fer_common.model.checkpoint import model_from_checkpoint
    from fer_common.model.networks import count_parameters

    ckpt = load_checkpoint(MODELS / "fer_model.pth", expected_type="default")
    assert count_parameters(model_from_checkpoint(ckpt)) <= 2.5e6
    for name in ("fer_model.onnx", "fer_model.int8.onnx"):
        meta = read_onnx_metadata(MODELS / name)
        assert meta["class_names"] == ckpt["class_names"] and meta["preprocessing"] == ckpt["preprocessing"]
        assert meta["calibration"]["temperature"] == ckpt["calibration"]["temperature"]


def test_a_known_face_is_read_as_happy_by_every_shipped_file():
    image = cv2.imread(str(TEST_IMAGE))
    crops = crop_faces(image, FaceDetector().detect(image))
    assert len(crops) == 1                                # one smiling face in the test photo
    for name in ("fer_model.pth", "fer_model.onnx", "fer_model.int8.onnx"):
        predictor = Predictor(MODELS / name)
        probs = predictor.predict(crops).probabilities[0]
        assert predictor.class_names[int(probs.argmax())] == "Happy" and probs.max() > 0.6, name


def test_the_fer_plus_model_ships_beside_the_default():
    """Issue 31: the FER+ model, trained on the crowd votes: eight classes, the same budget, three files that
    agree, reachable by its short name, and the known face read as Happy."""
    from fer_common import FER
    from fer_common.model.checkpoint import model_from_checkpoint
    from fer_common.model.networks import count_parameters

    ckpt = load_checkpoint(MODELS / "ferplus_model.pth", expected_type="default")
    assert ckpt["class_names"] == sorted([*EMOTIONS, "Contempt"]) and "optimizer" not in ckpt
    assert ckpt["votes"]["mode"] == "crossentropy" and ckpt["calibration"]["temperature"] > 0
    assert count_parameters(model_from_checkpoint(ckpt)) <= 2.5e6
    for name in ("ferplus_model.onnx", "ferplus_model.int8.onnx"):
        meta = read_onnx_metadata(MODELS / name)
        assert meta["class_names"] == ckpt["class_names"] and meta["preprocessing"] == ckpt["preprocessing"]
        assert meta["calibration"]["temperature"] == ckpt["calibration"]["temperature"]
    fer = FER(model="ferplus")
    assert fer.predictor.path.name == "ferplus_model.int8.onnx"
    face = fer.analyse(TEST_IMAGE)[0]
    assert face.top_emotion == "Happy" and face.confidence > 0.6
    r = run_script("inference.py", TEST_IMAGE, "--checkpoint", "ferplus", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)[0]["faces"][0]["probabilities"]) == 8
