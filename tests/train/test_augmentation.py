"""fer_common.train.augmentation: the batched warp, the degradations of the broad policy, and the teachers' clean view."""

import numpy as np
import torch

from fer_common.train.augmentation import augment, augment_views, degrade, gaussian_blur, jpeg_roundtrip, random_erase
from fer_common.preprocess import ADVANCED_PREPROCESSING, DEFAULT_PREPROCESSING, normalize
from fer_common.train.recipes import mix_batch
from helpers_models import train_briefly


def bar_images(n=16, channels=1, size=48):
    images = torch.zeros(n, channels, size, size, dtype=torch.uint8)
    images[:, :, size // 5:size * 4 // 5, size * 2 // 5:size * 3 // 5] = 200     # a bright bar on each image
    return images


def test_augment_keeps_shape_range_and_varies():
    images = bar_images()
    x = augment(images, DEFAULT_PREPROCESSING, torch.Generator().manual_seed(0))
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


def test_standard_policy_gives_one_view_and_broad_degrades_about_half():
    images = bar_images(200)
    teacher, student = augment_views(images, DEFAULT_PREPROCESSING, torch.Generator().manual_seed(0), "standard")
    assert teacher is student
    teacher, student = augment_views(images, DEFAULT_PREPROCESSING, torch.Generator().manual_seed(0), "broad")
    assert teacher.shape == student.shape == images.shape and torch.isfinite(student).all()
    assert student.min() >= -2 - 1e-5 and student.max() <= 2 + 1e-5
    changed = (teacher - student).flatten(1).abs().amax(1) > 1e-4
    assert 0.3 < changed.float().mean() < 0.75                          # some faces stay clean
    again = augment_views(images, DEFAULT_PREPROCESSING, torch.Generator().manual_seed(0), "broad")
    assert torch.equal(again[0], teacher) and torch.equal(again[1], student)


def test_broad_works_on_three_channel_models():
    teacher, student = augment_views(bar_images(8, 3, 112), ADVANCED_PREPROCESSING, torch.Generator().manual_seed(1), "broad")
    assert student.shape == (8, 3, 224, 224) and torch.isfinite(student).all()


def test_gaussian_blur_keeps_mass_and_spreads_with_sigma():
    x = torch.zeros(3, 1, 21, 21)
    x[:, :, 10, 10] = 1.0
    blurred = gaussian_blur(x, torch.tensor([0.5, 1.0, 2.0]))
    assert torch.allclose(blurred.sum((1, 2, 3)), torch.ones(3), atol=1e-4)
    peaks = blurred[:, 0, 10, 10]
    assert peaks[0] > peaks[1] > peaks[2]                              # each image its own sigma
    flat = torch.full((2, 3, 9, 9), 0.4)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([1.0, 1.5])), flat, atol=1e-6)


def test_jpeg_roundtrip_keeps_shape_and_loses_detail_at_low_quality():
    rng = np.random.default_rng(0)
    for channels in (1, 3):
        image = torch.from_numpy(rng.random((channels, 48, 48), dtype=np.float32))
        low, high = jpeg_roundtrip(image, 10), jpeg_roundtrip(image, 95)
        assert low.shape == high.shape == image.shape
        assert (low - image).abs().mean() > (high - image).abs().mean()


def test_random_erase_fills_one_rectangle_inside_the_image():
    image = torch.zeros(1, 48, 48)
    random_erase(image, torch.Generator().manual_seed(3))
    rows, cols = image[0].nonzero(as_tuple=True)
    area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert 0.01 * 48 * 48 <= area <= 0.16 * 48 * 48


def test_degrade_with_no_shares_changes_nothing():
    x = torch.rand(4, 1, 48, 48)
    assert torch.equal(degrade(x, torch.Generator().manual_seed(0)), x)


def test_mixup_mixes_both_views_with_one_partner():
    torch.manual_seed(0)
    a, b = torch.arange(4.0).view(4, 1, 1, 1), torch.arange(4.0).view(4, 1, 1, 1) * 10
    (ma, mb), y, partner, lam = mix_batch((a, b), torch.arange(4), alpha=0.4)
    assert torch.allclose(mb, ma * 10)                                 # the same pairs and weight in both views


class RecordingTeachers:
    """Stands in for recipes.Teachers: uniform soft labels, and remembers the batches it was shown."""
    temperature = 4.0

    def __init__(self):
        self.seen = []

    def soft_targets(self, x):
        self.seen.append(x.clone())
        return torch.full((x.shape[0], 7), 1 / 7)


def test_teachers_see_the_clean_view_and_the_student_the_degraded_one(monkeypatch):
    from fer_common.train import loop as training
    from fer_common.train.loaders import MemoryLoader
    from fer_common.model.networks import FERNet

    views = {}

    def fake_views(images, prep, generator=None, policy="standard"):
        assert policy == "broad"
        views["teacher"], views["student"] = torch.zeros(len(images), 1, 48, 48), torch.ones(len(images), 1, 48, 48)
        return views["teacher"], views["student"]

    monkeypatch.setattr(training, "augment_views", fake_views)
    model, teachers = FERNet(widths=(8, 16, 16, 32)), RecordingTeachers()
    shown = []
    model.register_forward_pre_hook(lambda module, args: shown.append(args[0].clone()))
    opts = training.EpochOptions(torch.optim.AdamW(model.parameters(), 1e-3), torch.nn.CrossEntropyLoss(),
                                 torch.device("cpu"), DEFAULT_PREPROCESSING, teachers=teachers, augmentation="broad")
    loader = MemoryLoader(bar_images(8), torch.zeros(8, dtype=torch.long), 8, shuffle=False)
    training.train_one_epoch(model, loader, opts, quiet=True)
    assert len(teachers.seen) == 1 and torch.equal(teachers.seen[0], views["teacher"])
    assert torch.equal(shown[0], views["student"])


def test_student_learns_under_broad_augmentation(tiny_data):
    from fer_common.model.networks import FERNet

    torch.manual_seed(0)
    before, after, _, _ = train_briefly(FERNet(widths=(8, 16, 16, 32)), tiny_data, 10, augmentation="broad")
    assert after < before
