import cv2
import numpy as np
import pytest

from fer_common import detection
from fer_common.cli import FERError
from fer_common.detection import FaceDetector, crop_faces, expand_box
from helpers_models import TEST_IMAGE


@pytest.fixture(scope="module")
def haar():
    return FaceDetector()


def test_haar_finds_the_face_in_the_test_image(haar):
    image = cv2.imread(str(TEST_IMAGE))
    boxes = haar.detect(image)
    assert boxes.shape == (1, 4) and boxes.dtype == np.int32
    x, y, w, h = boxes[0]
    # The astronaut's face: centred near (225, 115) in the 512 x 512 portrait, about 95 px wide.
    assert abs(x + w / 2 - 225) < 25 and abs(y + h / 2 - 115) < 25 and 60 < w < 140


def test_large_frames_are_detected_downscaled_and_mapped_back(haar):
    image = cv2.imread(str(TEST_IMAGE))
    big = cv2.resize(image, (1536, 1536))
    small_box = haar.detect(image)[0]
    boxes = FaceDetector(detect_width=512).detect(big)
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0], small_box * 3, atol=12)


def test_gray_frames_and_no_face(haar):
    gray = cv2.imread(str(TEST_IMAGE), cv2.IMREAD_GRAYSCALE)
    assert len(haar.detect(gray)) == 1
    assert haar.detect(np.full((240, 320, 3), 127, np.uint8)).shape == (0, 4)


def test_crops_are_clipped_at_the_image_edge():
    frame = np.arange(100 * 80 * 3, dtype=np.uint32).reshape(100, 80, 3).astype(np.uint8)
    boxes = np.array([[-10, -5, 30, 30], [60, 80, 40, 40], [20, 20, 20, 20]])
    crops = crop_faces(frame, boxes, margin=0.1)
    assert [c.shape[:2] for c in crops] == [(28, 23), (24, 24), (24, 24)]
    assert expand_box([-10, -5, 30, 30], 0.1, frame.shape) == (0, 0, 23, 28)
    assert expand_box([60, 80, 40, 40], 0.1, frame.shape) == (56, 76, 24, 24)
    np.testing.assert_array_equal(crops[2], frame[18:42, 18:42])
    assert all(c.size for c in crop_faces(frame, [[200, 200, 10, 10]]))   # off-image box: still a 1x1 crop


def test_yunet_offline_without_model_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(detection.urllib.request, "urlopen", offline)
    with pytest.raises(FERError, match="--detector_model PATH, or use the default --detector haar"):
        FaceDetector("yunet")
    with pytest.raises(FERError, match="YuNet model not found"):
        FaceDetector("yunet", tmp_path / "missing.onnx")
