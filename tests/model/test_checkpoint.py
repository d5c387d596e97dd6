import pytest
import torch

from fer_common.model.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from fer_common.cli import FERError
from fer_common.labels import EMOTIONS
from fer_common.model.networks import AdvancedFER, FERNet, default_preprocessing


def test_round_trip_keeps_class_order_and_weights(tmp_path):
    model = FERNet(widths=(8, 16, 16, 32)).eval()
    names = sorted(EMOTIONS)                       # ImageFolder order: Neutral is index 4, not 6
    ckpt = make_checkpoint(model, "default", {"widths": (8, 16, 16, 32)}, names, default_preprocessing("default"),
                           epoch=3, metrics={"val_acc": 0.5})
    path = tmp_path / "m.pth"
    save_checkpoint(ckpt, path)
    raw = torch.load(path, weights_only=True)      # plain types only: safe to load
    assert raw["class_names"] == names and raw["epoch"] == 3
    loaded = load_checkpoint(path, expected_type="default")
    rebuilt = model_from_checkpoint(loaded)
    x = torch.randn(2, 1, 48, 48)
    torch.testing.assert_close(rebuilt(x)[0], model(x)[0])
    assert loaded["preprocessing"]["input_size"] == [48, 48]


def test_advanced_checkpoint_rebuilds_its_backbone(tmp_path):
    model = AdvancedFER(backbone="test_vit").eval()
    ckpt = make_checkpoint(model, "advanced", {"backbone": "test_vit", "pretrained": True}, EMOTIONS,
                           default_preprocessing("advanced", model))
    assert "pretrained" not in ckpt["model_config"]
    save_checkpoint(ckpt, tmp_path / "a.pth")
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "a.pth"))
    x = torch.randn(1, 3, *ckpt["preprocessing"]["input_size"])
    torch.testing.assert_close(rebuilt(x)[1], model(x)[1])


def test_plain_state_dict_loads_when_type_is_given(tmp_path):
    model = FERNet().eval()
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "old.pth")
    ckpt = load_checkpoint(tmp_path / "old.pth", expected_type="default")
    assert ckpt["class_names"] == EMOTIONS
    model_from_checkpoint(ckpt)
    with pytest.raises(FERError, match="bare weights"):
        load_checkpoint(tmp_path / "old.pth")


def test_wrong_type_missing_and_corrupt_files(tmp_path):
    model = FERNet()
    save_checkpoint(make_checkpoint(model, "default", {}, EMOTIONS, default_preprocessing("default")), tmp_path / "d.pth")
    with pytest.raises(FERError, match="holds a 'default' model, not 'advanced'"):
        load_checkpoint(tmp_path / "d.pth", expected_type="advanced")
    with pytest.raises(FERError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FERError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "bad.pth")
    torch.save({"hello": "world"}, tmp_path / "other.pth")
    with pytest.raises(FERError, match="not a FER checkpoint"):
        load_checkpoint(tmp_path / "other.pth")


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    ckpt = make_checkpoint(FERNet(widths=(8, 16, 16, 32)), "default", {}, EMOTIONS, default_preprocessing("default"))
    with pytest.raises(FERError, match="weights do not fit the 'default' model"):
        model_from_checkpoint(ckpt)
