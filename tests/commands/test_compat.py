"""fer_common.compat: code written for the `fer` package and for deepface runs with one changed import.

The fer half is written as fer's own test suite is (a unittest.TestCase with a shared detector), the deepface
half as deepface's (plain functions over DeepFace.analyze's answers): a smiling face (Test_files/IMG_test_1.jpg),
a face-free picture made here, and a few frames of Test_files/Video_Test_1.mp4.
"""

import base64
import io
import re
import subprocess
import sys
import unittest
import warnings
import zipfile
from unittest import mock

import cv2
import numpy as np
import pytest

from fer_common import FER as ToolkitFER
from fer_common.compat import common
from fer_common.compat.deepface import DeepFace
from fer_common.compat.fer import FER, InvalidImage, Video
from fer_common.errors import FERError
from helpers_models import TEST_IMAGE, TEST_VIDEO
from synthetic import REPO

FER_NAMES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]   # fer's and deepface's order


def no_face_image() -> np.ndarray:
    """A 320 x 240 BGR picture with shapes and texture but no face."""
    rng = np.random.default_rng(0)
    image = np.tile(np.linspace(40, 200, 320, dtype=np.float32), (240, 1))
    image = (image + rng.normal(0, 8, image.shape)).clip(0, 255).astype(np.uint8)
    image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    cv2.rectangle(image, (30, 40), (110, 150), (0, 90, 200), -1)
    cv2.line(image, (150, 20), (300, 220), (250, 250, 250), 6)
    return image


def data_uri(path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def one_note():
    """A fresh process's state of the one-time notes (each peer says its note once per process)."""
    return mock.patch.object(common, "_noted", set())


# ------------------------------------------------------------------------------------------------------ fer

class TestFER(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.detector = FER()
        cls.image = cv2.imread(str(TEST_IMAGE))

    def test_detect_emotions(self):
        """FER is able to detect faces and emotions."""
        result = self.detector.detect_emotions(self.image)
        self.assertEqual(len(result), 1)
        self.assertEqual(set(result[0]), {"box", "emotions"})
        box, emotions = result[0]["box"], result[0]["emotions"]
        self.assertEqual(len(box), 4)
        self.assertTrue(all(type(v) is int for v in box))
        self.assertEqual(list(emotions), FER_NAMES)
        self.assertTrue(all(score == round(score, 2) for score in emotions.values()))     # fer rounds to 2 places
        self.assertGreater(emotions["happy"], 0.5)

    def test_detect_emotions_noface(self):
        """FER successfully finds no face when the input has none."""
        self.assertEqual(self.detector.detect_emotions(no_face_image()), [])
        self.assertEqual(self.detector.top_emotion(no_face_image()), (None, None))

    def test_top_emotion(self):
        """FER's top_emotion() returns the first face's top emotion and its (rounded) score."""
        top_emotion, score = self.detector.top_emotion(self.image)
        self.assertEqual(top_emotion, "happy")
        self.assertEqual(score, self.detector.detect_emotions(self.image)[0]["emotions"]["happy"])

    def test_path_gray_and_base64_inputs(self):
        expected = self.detector.detect_emotions(self.image)
        self.assertEqual(self.detector.detect_emotions(str(TEST_IMAGE)), expected)
        self.assertEqual(self.detector.detect_emotions(data_uri(TEST_IMAGE)), expected)
        gray = cv2.cvtColor(self.image, cv2.COLOR_BGR2GRAY)
        self.assertEqual(self.detector.top_emotion(gray)[0], "happy")

    def test_answers_are_the_toolkits(self):
        """The same detector, model and numbers as fer_common.FER, in fer's shape."""
        face = ToolkitFER().analyse(self.image)[0]
        result = self.detector.detect_emotions(self.image)[0]
        self.assertEqual(result["box"], list(face.box))
        self.assertEqual(result["emotions"], {name.lower(): round(p, 2) for name, p in face.probabilities.items()})
        # given rectangles are classified as the crops they frame: the detected box gives the same answer
        self.assertEqual(self.detector.detect_emotions(self.image, face_rectangles=[face.box]), [result])
        self.assertEqual(self.detector.find_faces(self.image), [result["box"]])

    def test_batch_detect_emotions(self):
        images = [self.image, no_face_image(), str(TEST_IMAGE)]
        batch = self.detector.batch_detect_emotions(images, batch_size=2)
        self.assertEqual(batch, [self.detector.detect_emotions(img) for img in images])
        self.assertEqual([len(faces) for faces in batch], [1, 0, 1])
        self.assertEqual(self.detector.batch_detect_emotions([]), [])

    def test_invalid_image(self):
        """Anything that is no readable image is an InvalidImage, told in one line."""
        junk = REPO / "tests" / "__no_such_image__.jpg"
        for bad in [None, 42, str(junk), "data:image/png;base64,bm90IGFuIGltYWdl", "https://example.org/face.jpg",
                    np.zeros((10, 10), np.float32)]:
            with self.assertRaises(InvalidImage, msg=repr(bad)[:40]) as caught:
                self.detector.detect_emotions(bad)
            self.assertIsInstance(caught.exception, FERError)
            self.assertNotIn("\n", str(caught.exception))

    def test_fer_keywords_are_accepted_and_noted_once(self):
        with one_note():
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                FER(cascade_file=None, mtcnn=False, offsets=[10, 10])            # fer's defaults: nothing to say
            with self.assertWarnsRegex(UserWarning, r"mtcnn=True, min_face_size=30: no effect.*yunet"):
                FER(mtcnn=True, min_face_size=30)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                FER(scale_factor=1.3, tfserving=True)                             # said once per process
        with self.assertRaisesRegex(ValueError, "scale_factor must be greater than 1.0"):    # fer's checks
            FER(scale_factor=1.0)
        with self.assertRaisesRegex(ValueError, "offsets"):
            FER(offsets=(10,))


def test_a_model_with_other_classes_keeps_their_names(tmp_path):
    """An 8-class FER+-style model: fer's seven names in fer's order, then Contempt lower-cased."""
    from helpers_models import save_default

    ferplus = ["Neutral", "Happy", "Surprise", "Sad", "Angry", "Disgust", "Fear", "Contempt"]
    save_default(tmp_path / "ferplus.pth", class_names=ferplus)
    detector = FER(model=tmp_path / "ferplus.pth", tta=False)
    image = cv2.imread(str(TEST_IMAGE))
    emotions = detector.detect_emotions(image)[0]["emotions"]
    assert list(emotions) == FER_NAMES + ["contempt"]
    face = detector.fer.analyse(image)[0]
    assert emotions == {name.lower(): round(p, 2) for name, p in face.probabilities.items()}
    assert list(DeepFace.analyze(image)[0]["emotion"]) == FER_NAMES        # deepface: the shipped model


def test_video(tmp_path, monkeypatch):
    """fer's Video: per-frame rows, its files in outdir, and its pandas views."""
    monkeypatch.chdir(tmp_path)                          # fer writes data.csv to the working folder
    detector = FER(tta=False)
    video = Video(str(TEST_VIDEO), outdir=str(tmp_path / "output"))
    raw_data = video.analyze(detector, display=False, frequency=5, max_results=4)
    assert isinstance(raw_data, list) and len(raw_data) == 4            # the clip's first frames: one face each
    assert set(raw_data[0]) == {"box0", *(name + "0" for name in FER_NAMES)}
    assert raw_data[0]["happy0"] > 0.5
    assert (tmp_path / "data.csv").read_text().startswith("angry0,box0,disgust0,")
    assert (tmp_path / "output" / "Video_Test_1_output.mp4").stat().st_size > 0
    with zipfile.ZipFile(tmp_path / "output" / "images.zip") as archive:   # frames 0, 5, 10, 15, zipped
        assert sorted(archive.namelist()) == sorted(f"Video_Test_1{k}.jpg" for k in (0, 5, 10, 15))
    assert not list((tmp_path / "output").glob("*.jpg"))

    df = video.to_pandas(raw_data)
    assert list(df.columns) == ["box", *FER_NAMES] and len(df) == 4
    assert list(video.get_first_face(df).columns) == list(df.columns)
    assert list(video.get_emotions(df).columns) == FER_NAMES

    frame = cv2.VideoCapture(str(TEST_VIDEO)).read()[1]
    first = video.analyze(detector, output="pandas", max_results=1, save_frames=False, save_video=False)
    assert first["box"][0] == detector.detect_emotions(frame)[0]["box"]         # a frame is analysed as an image
    inside = video.analyze(detector, max_results=2, save_frames=False, save_video=False,
                           detection_box={"x_min": 50, "x_max": 350, "y_min": 20, "y_max": 320})
    x, y, w, h = inside[0]["box0"]
    assert x >= 50 and y >= 20 and x + w <= 350 and y + h <= 320              # boxes in the frame's coordinates


def test_video_errors(tmp_path, monkeypatch):
    with pytest.raises(FERError, match="video not found"):
        Video(str(tmp_path / "none.mp4"))
    video = Video(str(TEST_VIDEO), outdir=str(tmp_path))
    with pytest.raises(FERError, match="compat.fer.FER"):
        video.analyze(object())
    monkeypatch.setitem(sys.modules, "pandas", None)                # pandas is an optional extra
    with pytest.raises(FERError, match=r"pandas: pip install 'fer-toolkit\[table\]'"):
        video.to_pandas([[{"box": [0, 0, 1, 1], "emotions": {"happy": 1.0}}]])


# ------------------------------------------------------------------------------------------------- deepface

def test_standard_analyze():
    img = str(TEST_IMAGE)
    demography_objs = DeepFace.analyze(img, silent=True)
    assert len(demography_objs) == 1
    for demography in demography_objs:
        assert set(demography) == {"emotion", "dominant_emotion", "region", "face_confidence"}
        assert list(demography["emotion"]) == FER_NAMES
        assert sum(demography["emotion"].values()) == pytest.approx(100)
        assert demography["dominant_emotion"] == "happy" and demography["emotion"]["happy"] > 50
        assert set(demography["region"]) == {"x", "y", "w", "h", "left_eye", "right_eye"}
        assert demography["region"]["left_eye"] is None and demography["region"]["right_eye"] is None
        assert 0.5 < demography["face_confidence"] <= 1 and demography["face_confidence"] == round(
            demography["face_confidence"], 2)
    face = ToolkitFER().analyse(img)[0]                                   # the toolkit's answer, in percent
    region = demography_objs[0]["region"]
    assert (region["x"], region["y"], region["w"], region["h"]) == face.box
    assert demography_objs[0]["emotion"]["happy"] == pytest.approx(100 * face.probabilities["Happy"])


def test_analyze_for_preloaded_image_base64_and_file_object():
    expected = DeepFace.analyze(str(TEST_IMAGE))
    assert DeepFace.analyze(cv2.imread(str(TEST_IMAGE))) == expected
    assert DeepFace.analyze(data_uri(TEST_IMAGE)) == expected
    assert DeepFace.analyze(io.BytesIO(TEST_IMAGE.read_bytes())) == expected


def test_analyze_for_batched_image():
    results = DeepFace.analyze([str(TEST_IMAGE), cv2.imread(str(TEST_IMAGE))])
    assert len(results) == 2 and results[0] == results[1] and results[0][0]["dominant_emotion"] == "happy"


def test_enforce_detection():
    img = no_face_image()
    with pytest.raises(ValueError, match="Face could not be detected in numpy array"):
        DeepFace.analyze(img)
    objs = DeepFace.analyze(img, enforce_detection=False)                 # the whole image as the face
    assert len(objs) == 1 and objs[0]["face_confidence"] == 0
    assert {k: objs[0]["region"][k] for k in "xywh"} == {"x": 0, "y": 0, "w": 320, "h": 240}
    assert sum(objs[0]["emotion"].values()) == pytest.approx(100)
    skipped = DeepFace.analyze(str(TEST_IMAGE), detector_backend="skip")   # skip: no detection at all
    assert skipped[0]["region"]["w"] == 512 and skipped[0]["face_confidence"] == 0


def test_analyze_for_some_actions():
    assert DeepFace.analyze(str(TEST_IMAGE), actions="emotion")[0]["dominant_emotion"] == "happy"
    for actions in [("age",), ["emotion", "gender"], ("age", "gender", "race", "emotion")]:
        with pytest.raises(ValueError, match=r"not available here: this toolkit answers 'emotion' only") as e:
            DeepFace.analyze(str(TEST_IMAGE), actions=actions)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="Invalid action passed"):
        DeepFace.analyze(str(TEST_IMAGE), actions=("mood",))
    with pytest.raises(ValueError, match="must be a list of strings"):
        DeepFace.analyze(str(TEST_IMAGE), actions=[])


def test_analyze_for_different_detectors():
    expected = DeepFace.analyze(str(TEST_IMAGE))
    with one_note():
        with pytest.warns(UserWarning, match="detector_backend='mtcnn': no effect") as record:
            assert DeepFace.analyze(str(TEST_IMAGE), detector_backend="mtcnn") == expected
            assert DeepFace.analyze(str(TEST_IMAGE), detector_backend="retinaface", expand_percentage=10) == expected
        assert len(record) == 1                                            # said once
    with pytest.raises(ValueError, match="Invalid model_name passed - face_detector/yolo"):
        DeepFace.analyze(str(TEST_IMAGE), detector_backend="yolo")
    with pytest.raises(ValueError, match="anti_spoofing is not available here"):
        DeepFace.analyze(str(TEST_IMAGE), anti_spoofing=True)


def test_analyze_bad_input(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    for bad in [str(tmp_path / "none.jpg"), str(tmp_path / "junk.jpg"), "data:image/png;base64,bm90", 3.5,
                io.StringIO("text")]:
        with pytest.raises(ValueError) as e:
            DeepFace.analyze(bad)
        assert isinstance(e.value, FERError) and "\n" not in str(e.value)
    with pytest.raises(InvalidImage, match="cannot read .*junk.jpg as an image"):
        FER().detect_emotions(str(tmp_path / "junk.jpg"))


def test_readme_section_runs():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Coming from fer or deepface"):]
    exec(re.search(r"```python\n(.*?)```", section, re.S).group(1), {})


def test_compat_loads_without_pytorch():
    code = ("import sys, fer_common.compat.fer, fer_common.compat.deepface; "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"
