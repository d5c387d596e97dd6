"""fer_common.preprocess: normalisation (the training augmentation is in test_augmentation), image headers."""

import cv2
import numpy as np
import torch

from fer_common.preprocess import (ADVANCED_PREPROCESSING, DEFAULT_PREPROCESSING, image_header_size, normalize,
                                   prepare_batch)


def test_normalize_matches_prepare_batch():
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(3)]
    x = normalize(torch.from_numpy(np.stack(crops))[:, None], DEFAULT_PREPROCESSING)
    assert x.shape == (3, 1, 48, 48)
    np.testing.assert_allclose(x.numpy(), prepare_batch(crops, DEFAULT_PREPROCESSING), atol=1e-5)
    # (0.5 - 0.5) / 0.25 = 0 for mid-gray, (1 - 0.5) / 0.25 = 2 for white
    x = normalize(torch.tensor([[[[0, 255]]]], dtype=torch.uint8), {**DEFAULT_PREPROCESSING, "input_size": [1, 2]})
    assert torch.allclose(x.flatten(), torch.tensor([-2.0, 2.0]))


def test_normalize_resizes_to_the_model_input():
    x = normalize(torch.zeros(2, 3, 112, 112, dtype=torch.uint8), ADVANCED_PREPROCESSING)
    assert x.shape == (2, 3, 224, 224)


def test_image_header_size_reads_jpeg_and_png_headers_as_pillow_does(tmp_path):
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    encoded = {"baseline.jpg": cv2.imencode(".jpg", image)[1], "progressive.jpg":
               cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1],
               "gray.png": cv2.imencode(".png", image[..., 0])[1], "photo.bmp": cv2.imencode(".bmp", image)[1]}
    # A JPEG with an EXIF segment (APP1) and fill bytes before its frame header, as cameras write them.
    jpeg = encoded["baseline.jpg"].tobytes()
    encoded["exif.jpg"] = np.frombuffer(jpeg[:2] + b"\xff\xe1\x00\x10Exif\x00\x00" + b"\x00" * 8 + b"\xff" + jpeg[2:],
                                        np.uint8)
    for name, data in encoded.items():
        (tmp_path / name).write_bytes(data.tobytes())
        with Image.open(tmp_path / name) as im:
            assert im.size == (53, 37)
        assert image_header_size(data) == (53, 37) == image_header_size(data.tobytes()), name
    for damaged in (jpeg[:40], b"\xff\xd8\xff\xda", b"\xff\xd8" + b"\x00" * 20, b"\x89PNG\r\n\x1a\n"):
        assert image_header_size(np.frombuffer(damaged, np.uint8)) is None
