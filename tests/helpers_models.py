"""Small random models saved as the scripts expect them, shared by the inference/video tests."""

from pathlib import Path

import torch

from fer_common.model.checkpoint import make_checkpoint, save_checkpoint
from fer_common.labels import EMOTIONS
from fer_common.model.networks import AdvancedFER, FERNet, default_preprocessing
from synthetic import REPO, run_script  # noqa: F401  (run_script is re-exported for the tests)

TEST_IMAGE = REPO / "Test_files" / "IMG_test_1.jpg"
TEST_VIDEO = REPO / "Test_files" / "Video_Test_1.mp4"
PERMUTED = ["Neutral", "Happy", "Sad", "Angry", "Surprise", "Fear", "Disgust"]


def save_default(path, class_names=EMOTIONS, seed: int = 0) -> FERNet:
    """A randomly initialised default model (eval mode) saved as a checkpoint at `path`."""
    torch.manual_seed(seed)
    model = FERNet(num_classes=len(class_names)).eval()
    with torch.no_grad():   # random BatchNorm statistics, so the outputs depend on the input
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    save_checkpoint(make_checkpoint(model, "default", {}, class_names, default_preprocessing("default")), path)
    return model


def save_advanced(path, class_names=EMOTIONS) -> AdvancedFER:
    """An advanced model on timm's tiny test_vit backbone (160x160 RGB), saved at `path`."""
    torch.manual_seed(0)
    model = AdvancedFER(backbone="test_vit").eval()
    prep = default_preprocessing("advanced", model)
    save_checkpoint(make_checkpoint(model, "advanced", {"backbone": "test_vit"}, class_names, prep), path)
    return model


def shared_models(tmp_path_factory) -> Path:
    """One folder per test session holding fer_model.pth and its ONNX export (the export takes seconds: made once)."""
    from fer_common.model.onnx_export import export_onnx

    root = tmp_path_factory.getbasetemp() / "shared_models"
    if not (root / "fer_model.onnx").is_file():
        root.mkdir(exist_ok=True)
        model = save_default(root / "fer_model.pth")
        export_onnx(model, root / "fer_model.onnx", "default", EMOTIONS, default_preprocessing("default"),
                    verbose=False)
    return root


def train_briefly(model, data_dir, epochs: int = 15, **train_kwargs):
    """Train `model` in memory on data_dir/train_new for a few epochs; (loss before, loss after, preds, targets).

    train_kwargs go to training.EpochOptions (ema, mixup, teachers, ...)."""
    from fer_common.datasets.folders import list_samples
    from fer_common.train.loaders import MemoryLoader, load_into_memory
    from fer_common.train.loop import EpochOptions, evaluate, train_one_epoch

    prep = default_preprocessing("default")
    samples, _ = list_samples(data_dir / "train_new")
    images, labels, _ = load_into_memory(samples, prep["input_size"], 1, quiet=True)
    loader = MemoryLoader(images, labels, 16, shuffle=True, drop_last=True)
    eval_loader = MemoryLoader(images, labels, 64, shuffle=False)
    device = torch.device("cpu")
    before, _, _, _ = evaluate(model, eval_loader, device, prep, quiet=True)
    opts = EpochOptions(torch.optim.AdamW(model.parameters(), 3e-3), torch.nn.CrossEntropyLoss(), device, prep,
                        **train_kwargs)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        train_one_epoch(model, loader, opts, quiet=True)
    after, _, preds, targets = evaluate(model, eval_loader, device, prep, quiet=True)
    return before, after, preds, targets
