"""Training augmentation on whole uint8 batches: the geometric warp, and the image degradations of `broad`.

Two policies (`--augmentation`):
    standard  mirror, +-10 degree rotation, +-10% zoom, +-8% shift, brightness/contrast
    broad     mirror, +-15 degree rotation, 0.8-1.2 zoom, +-10% shift, brightness/contrast, then on some
              images Gaussian blur, down-and-up resampling, sensor noise, JPEG re-encoding and random erasing:
              faces from other cameras and sites than FER-2013's
`augment_views` returns two views of each image: the warped one, which distillation teachers see, and the
same one degraded, which the student trains on ("clean teacher, noisy student"): a teacher trained without
blur would hand its confusion on blurred faces on to the student; on the clean view it says what the face is.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fer_common.preprocess import mean_std
from fer_common.train.args import POLICIES

def augment(images: torch.Tensor, prep: dict, generator: torch.Generator | None = None,
            policy: str = "standard") -> torch.Tensor:
    """The normalised training view of a uint8 batch (the student's view of `augment_views`)."""
    return augment_views(images, prep, generator, policy)[1]


def augment_views(images: torch.Tensor, prep: dict, generator: torch.Generator | None = None,
                  policy: str = "standard") -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher view, student view) of a uint8 N x C x h x w batch, both normalised at the model's input size.

    Under `standard` both are the same tensor. Reproducible from `generator`."""
    settings = POLICIES[policy]
    x = warp(images, prep, generator, settings["max_rotation"], settings["scale"], settings["max_shift"])
    mean, std = mean_std(prep, x.device)
    clean = (x - mean) / std
    if not settings["degrade"]:
        return clean, clean
    return clean, (degrade(x, generator, **settings["degrade"]) - mean) / std


def _rand(generator, device, *shape) -> torch.Tensor:
    return torch.rand(*shape, generator=generator, device="cpu").to(device)


def warp(images: torch.Tensor, prep: dict, generator=None, max_rotation: float = 10.0, scale: tuple = (0.9, 1.1),
         max_shift: float = 0.08, brightness: float = 0.2, contrast: float = 0.2) -> torch.Tensor:
    """One random affine warp per image (mirror, rotation, zoom, shift) by a single grid_sample, then
    brightness/contrast jitter; uint8 batch in, [0, 1] float batch at the model's input size out.
    Batched, so CPU training does no per-image Python work for it."""
    n, device = images.shape[0], images.device
    rand = lambda *shape: _rand(generator, device, *shape)  # noqa: E731
    x = images.float().div_(255.0)
    angle = (rand(n) * 2 - 1) * (max_rotation * torch.pi / 180)
    zoom = scale[0] + rand(n) * (scale[1] - scale[0])
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0)
    shift = (rand(n, 2) * 2 - 1) * max_shift * 2   # grid units span [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    h, w = prep["input_size"]
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    if x.shape[-2] < h or x.shape[-1] < w:
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = 1 + (rand(n, 1, 1, 1) * 2 - 1) * contrast
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * gain + mean + (rand(n, 1, 1, 1) * 2 - 1) * brightness * 0.5
    return x.clamp_(0, 1)


def degrade(x: torch.Tensor, generator=None, blur: float = 0.0, resample: float = 0.0, noise: float = 0.0,
            jpeg: float = 0.0, erase: float = 0.0) -> torch.Tensor:
    """A [0, 1] batch with each degradation applied to its share of the images, in the order a camera
    and the web apply them: optical blur or a low-resolution source, sensor noise, JPEG, then an occluder.
    Sizes scale with the input (blur sigma 0.3-1.3 px at 48 px); about half the images get at least one."""
    n, device = x.shape[0], x.device
    pick = lambda p: (_rand(generator, device, n) < p).nonzero().flatten().tolist()  # noqa: E731
    scale = x.shape[-1] / 48
    x = x.clone()
    chosen = pick(blur)
    if chosen:
        sigma = (0.3 + 1.0 * _rand(generator, device, len(chosen))) * scale
        x[chosen] = gaussian_blur(x[chosen], sigma)
    for i in pick(resample):
        factor = 0.4 + 0.4 * float(_rand(generator, "cpu", 1))
        small = F.interpolate(x[i:i + 1], scale_factor=factor, mode="area")
        x[i:i + 1] = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    chosen = pick(noise)
    if chosen:
        sigma = 0.01 + 0.04 * _rand(generator, device, len(chosen), 1, 1, 1)
        noise_draw = torch.randn(x[chosen].shape, generator=generator).to(device)
        x[chosen] = (x[chosen] + sigma * noise_draw).clamp_(0, 1)
    for i in pick(jpeg):
        x[i] = jpeg_roundtrip(x[i], quality=int(20 + 60 * float(_rand(generator, "cpu", 1))))
    for i in pick(erase):
        random_erase(x[i], generator)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image of N x C x H x W blurred with its own sigma (N values), by one separable grouped convolution."""
    n, c, h, w = x.shape
    radius = max(1, int(np.ceil(3 * float(sigma.max()))))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)          # N*C x taps
    flat = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """One C x H x W [0, 1] image encoded as JPEG at `quality` and decoded again (OpenCV, on the CPU)."""
    pixels = (image.detach().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(pixels), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return image
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    decoded = decoded.reshape(pixels.shape)
    return torch.from_numpy(decoded).permute(2, 0, 1).float().div_(255.0).to(image.device)


def random_erase(image: torch.Tensor, generator=None, area: tuple = (0.02, 0.15), aspect: tuple = (0.3, 3.3)) -> None:
    """Random erasing (Zhong et al. 2020) in place: one rectangle of C x H x W filled with uniform noise."""
    _, h, w = image.shape
    r = _rand(generator, "cpu", 4).tolist()
    size = h * w * (area[0] + r[0] * (area[1] - area[0]))
    ratio = float(np.exp(np.log(aspect[0]) + r[1] * (np.log(aspect[1]) - np.log(aspect[0]))))
    eh, ew = min(h, max(1, round((size * ratio) ** 0.5))), min(w, max(1, round((size / ratio) ** 0.5)))
    top, left = int(r[2] * (h - eh + 1)), int(r[3] * (w - ew + 1))
    fill = torch.rand(image[:, top:top + eh, left:left + ew].shape, generator=generator).to(image.device)
    image[:, top:top + eh, left:left + ew] = fill
