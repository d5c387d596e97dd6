"""fer_common.preprocess: normalisation (the training augmentation is in test_augmentation)."""

import numpy as np
import torch

from fer_common.preprocess import ADVANCED_PREPROCESSING, DEFAULT_PREPROCESSING, normalize, prepare_batch


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
