"""fer_common.preprocess: normalisation and the batched training augmentation."""

import numpy as np
import torch

from fer_common.preprocess import ADVANCED_PREPROCESSING, DEFAULT_PREPROCESSING, augment, normalize, prepare_batch


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


def test_augment_keeps_shape_range_and_varies():
    images = torch.zeros(16, 1, 48, 48, dtype=torch.uint8)
    images[:, :, 10:38, 20:28] = 200                                    # a bright bar on each image
    g = torch.Generator().manual_seed(0)
    x = augment(images, DEFAULT_PREPROCESSING, g)
    assert x.shape == images.shape and torch.isfinite(x).all()
    assert x.min() >= (0 - 0.5) / 0.25 - 1e-5 and x.max() <= (1 - 0.5) / 0.25 + 1e-5   # pixels stay in [0, 1]
    assert not torch.allclose(x[0], x[1])                              # each image gets its own warp
    again = augment(images, DEFAULT_PREPROCESSING, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)                                       # reproducible from the generator
    # the augmentation is mild: the bar stays mostly where it was
    plain = normalize(images, DEFAULT_PREPROCESSING)
    assert ((x > 0) & (plain > 0)).float().sum() > 0.5 * (plain > 0).float().sum()


def test_augment_upsamples_small_cached_images_for_big_models():
    x = augment(torch.zeros(2, 3, 112, 112, dtype=torch.uint8), ADVANCED_PREPROCESSING, torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 224, 224)
