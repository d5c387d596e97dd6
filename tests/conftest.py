"""Fixtures shared by the test modules. pytest.ini puts the repository root (fer_common and the scripts) and
this folder (synthetic.py, helpers_models.py: plain helper functions) on sys.path."""

import pytest

from helpers_models import shared_models
from synthetic import make_folder_dataset


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Scripts run in-process set the process's thread count (predictor.set_threads): undo it after each test."""
    import torch

    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """A folder with a random default model as fer_model.pth and its ONNX export, made once per session."""
    return shared_models(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """dataset/{train_new,val_new}/<7 emotions>/ with 8 and 3 learnable synthetic 48x48 images per class."""
    return make_folder_dataset(tmp_path_factory.mktemp("data"), per_class=(8, 3))
