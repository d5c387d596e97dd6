"""The Python API as the README shows it, and the package as `pip install .` installs it."""

import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from fer_common import FER, Face
from helpers_models import TEST_IMAGE
from synthetic import REPO


def readme_snippet() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_runs():
    r = subprocess.run([sys.executable, "-c", readme_snippet()], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Happy" in r.stdout and "(128,)" in r.stdout


def test_every_readme_python_snippet_runs_outside_the_repository(tmp_path):
    """Each ```python block of the README, run as a user would: in a folder of their own with their images
    (Test_files copied, dataset/test made), the package importable, and no models/ folder beside them."""
    shutil.copytree(REPO / "Test_files", tmp_path / "Test_files")
    (tmp_path / "dataset" / "test" / "Happy").mkdir(parents=True)
    shutil.copy(TEST_IMAGE, tmp_path / "dataset" / "test" / "Happy" / "a.jpg")
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 4 and not (tmp_path / "models").exists()
    env = dict(__import__("os").environ, PYTHONPATH=str(REPO))
    for block in blocks:
        r = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, f"{block}\n{r.stderr}"


def test_predictor_takes_a_shipped_models_short_name(tmp_path, monkeypatch):
    from fer_common import Predictor
    from fer_common.shipped import FERPLUS_MODEL_FILE, MODEL_FILE

    monkeypatch.chdir(tmp_path)
    assert Predictor("default").path.name == MODEL_FILE
    ferplus = Predictor("ferplus")
    assert ferplus.path.name == FERPLUS_MODEL_FILE and len(ferplus.class_names) == 8
    from fer_common.cli import FERError
    with pytest.raises(FERError, match="model file not found: nonesuch"):
        Predictor("nonesuch")


def test_analyse_an_array_a_file_and_a_crop():
    import cv2

    fer = FER(tta=False)
    image = cv2.imread(str(TEST_IMAGE))
    faces = fer.analyse(image)
    assert len(faces) == 1 and isinstance(faces[0], Face)
    face = faces[0]
    assert set(face.probabilities) == set(fer.class_names) and abs(sum(face.probabilities.values()) - 1) < 1e-4
    assert face.top_emotion == max(face.probabilities, key=face.probabilities.get) and face.embedding.shape == (128,)
    from_file = fer.analyse(TEST_IMAGE)[0]
    assert from_file.box == face.box and np.allclose(from_file.embedding, face.embedding, atol=1e-5)
    # the same as the predictor on the same crop: no second code path
    x, y, w, h = face.box
    direct = fer.predictor.predict([image[y:y + h, x:x + w]]).probabilities[0]
    assert np.allclose(list(face.probabilities.values()), direct, atol=1e-5)
    whole = fer.analyse(image, detect=False)
    assert len(whole) == 1 and whole[0].box == (0, 0, image.shape[1], image.shape[0])
    assert fer.analyse(np.zeros((240, 320, 3), np.uint8)) == []


def test_analyse_video_yields_tracked_faces_per_frame():
    from helpers_models import TEST_VIDEO

    fer = FER(tta=False)
    frames = list(fer.analyse_video(TEST_VIDEO, max_frames=60, detect_every=1))
    assert [r.frame for r in frames] == list(range(60)) and frames[20].time == pytest.approx(1.0)
    assert frames[0].source == str(TEST_VIDEO) and frames[0].size == (480, 360) and frames[0].error is None
    counts = [len(r.faces) for r in frames]
    assert counts[:50] == [1] * 50 and all(c >= 1 for c in counts[55:])      # the clip: one face, then two
    assert len({r.faces[0].track_id for r in frames[:50]}) == 1               # one id for the same face
    assert all(abs(sum(f.probabilities.values()) - 1) < 1e-4 for r in frames for f in r.faces)


def test_bad_input_is_a_clear_error(tmp_path):
    from fer_common.cli import FERError

    fer = FER(detector=None)
    with pytest.raises(FERError, match="image not found"):
        fer.analyse(tmp_path / "none.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(FERError, match="cannot read"):
        fer.analyse(tmp_path / "junk.jpg")
    with pytest.raises(FERError, match="uint8"):
        fer.analyse(np.zeros((10, 10), np.float32))
    with pytest.raises(FERError, match="not found"):
        FER(model=tmp_path / "none.pth")


def test_installed_package_finds_its_shipped_models(tmp_path):
    """Build the wheel `pip install .` would install, unpack it away from the repository, and use it."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"        # a copy, so that the build leaves nothing in the repository
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "requirements.txt"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "fer_common", src / "fer_common", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "models", src / "models", ignore=shutil.ignore_patterns("evaluation*"))
    shutil.copytree(REPO / "web", src / "web", ignore=shutil.ignore_patterns("node_modules"))     # the page
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "wheel"), str(src)], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    wheel = next((tmp_path / "wheel").glob("*.whl"))
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = ("import fer_common, fer_common.shipped as s; from fer_common import FER; "
            "print(fer_common.__file__); print(s.shipped_dir()); print(FER().analyse(sys.argv[1])[0].top_emotion)")
    r = subprocess.run([sys.executable, "-c", "import sys; " + code, str(TEST_IMAGE)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(tmp_path / "site"),
                                                                         "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    module, shipped, emotion = r.stdout.split()
    assert module.startswith(str(tmp_path / "site")) and shipped == str(tmp_path / "site" / "fer_common" / "shipped")
    assert emotion == "Happy"


def test_input_kinds_give_the_same_faces(tmp_path):
    import cv2
    from PIL import Image

    fer = FER(tta=False)
    bgr = cv2.imread(str(TEST_IMAGE))
    reference = fer.analyse(bgr)[0]
    rgb_pil = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))          # PIL: RGB, converted by its mode
    for image in (rgb_pil, rgb_pil.convert("RGBA"), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)):
        face = fer.analyse(image)[0]
        assert face.box == reference.box
        assert np.allclose(list(face.probabilities.values()), list(reference.probabilities.values()), atol=1e-5)
    gray = fer.analyse(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)))
    assert len(gray) == 1 and gray[0].top_emotion == reference.top_emotion
    from fer_common.cli import FERError
    for bad, what in [(np.zeros((0, 8, 3), np.uint8), "empty"), (np.zeros((8, 8, 2), np.uint8), "shape"),
                      ("no/such.jpg", "not found"), (3.5, "float")]:
        with pytest.raises(FERError, match=what):
            fer.analyse(bad)


def test_fer_uses_the_shipped_model_not_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "fer_model.pth").write_bytes(b"not a model: FER() must not even open it")
    monkeypatch.chdir(tmp_path)
    fer = FER()
    assert fer.predictor.path.name == "fer_model.int8.onnx" and "FER(model=" in repr(fer)


def test_folder_results_count_every_image(tmp_path):
    shutil.copy(TEST_IMAGE, tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    import cv2
    cv2.imwrite(str(tmp_path / "c.png"), np.full((200, 200, 3), 90, np.uint8))
    results = list(FER().analyse_folder(tmp_path))
    assert [r.source.rsplit("/", 1)[-1] for r in results] == ["a.jpg", "b.jpg", "c.png"]
    assert [r.error for r in results] == [None, "cannot decode", "no face found"]
    assert len(results[0].faces) == 1 and results[0].faces[0].score > 0.5
    import json
    assert json.loads(results[0].to_json())["faces"][0]["top_emotion"] == "Happy"


def test_one_fer_object_shared_by_threads():
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    fer = FER()
    image = cv2.imread(str(TEST_IMAGE))
    expected = fer.analyse(image)[0].probabilities
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: fer.analyse(image)[0].probabilities, range(32)))
    assert all(g == pytest.approx(expected, abs=1e-6) for g in got)


@pytest.mark.parametrize("detect", [False, True])
def test_an_image_gives_the_same_numbers_through_the_api_and_a_folder(tmp_path, detect):
    # one composition of detect -> crop -> predict (bulk.analyse_images), with files decoded the same way
    shutil.copy(TEST_IMAGE, tmp_path / TEST_IMAGE.name)
    fer = FER(tta=True)
    alone = fer.analyse_image(tmp_path / TEST_IMAGE.name, detect=detect)
    (in_folder,) = fer.analyse_folder(tmp_path, detect=detect)
    assert alone.to_dict() == in_folder.to_dict()
