import pytest
import torch

from fer_common.cli import FERError
from fer_common.model.networks import AdvancedFER, FERNet, create_backbone, create_model, default_preprocessing
import fer_common.model.networks as models


def _check_model(model, input_shape):
    x = torch.randn(*input_shape)
    logits, embedding = model(x)
    assert logits.shape == (input_shape[0], 7)
    assert embedding.shape == (input_shape[0], 128)
    assert torch.isfinite(logits).all() and torch.isfinite(embedding).all()
    assert torch.equal(model.eval()(x, return_embedding=True), model(x)[1])
    model.train()
    model.zero_grad()
    logits, embedding = model(x)
    (logits.sum() + embedding.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"parameters without gradient: {missing}"


def test_default_model_shapes_and_gradients():
    model = FERNet()
    prep = default_preprocessing("default")
    assert prep["input_size"] == [48, 48] and prep["channels"] == 1
    _check_model(model, (4, 1, 48, 48))


def test_advanced_model_small_backbone():
    model = AdvancedFER(backbone="test_vit")
    prep = default_preprocessing("advanced", model)
    assert prep["channels"] == 3
    _check_model(model, (2, 3, *prep["input_size"]))


def test_advanced_model_swin_features_are_pooled_correctly():
    # A small Swin at a reduced input keeps the test fast; Swin's features are channels-last (N, H, W, C).
    model = AdvancedFER(backbone="swin_tiny_patch4_window7_224", backbone_kwargs={"img_size": 112, "depths": (1, 1, 1, 1), "drop_path_rate": 0.0}).eval()
    x = torch.randn(2, 3, 112, 112)
    feature_map = model.backbone.forward_features(x)
    assert feature_map.shape[-1] == model.backbone.num_features          # channels last
    pooled = model.forward_features(x)
    assert torch.allclose(pooled, feature_map.mean(dim=(1, 2)), atol=1e-5)
    _check_model(model.eval(), (2, 3, 112, 112))


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(FERError, match="timm does not know the backbone 'no_such_net'"):
        create_model("advanced", backbone="no_such_net")


def test_unknown_model_type():
    with pytest.raises(FERError, match="unknown model type"):
        create_model("huge")


def test_local_pretrained_weights_are_loaded(tmp_path):
    source = create_backbone("test_vit")
    path = tmp_path / "test_vit.pth"
    torch.save(source.state_dict(), path)
    loaded = create_backbone("test_vit", pretrained_weights=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_missing_pretrained_weights_file(tmp_path):
    with pytest.raises(FERError, match="pretrained weights file not found"):
        create_backbone("test_vit", pretrained_weights=str(tmp_path / "nope.pth"))


def test_offline_download_names_both_ways_out(monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(FERError, match="--pretrained_weights PATH.*--no_pretrained"):
        create_backbone("test_vit", pretrained=True)


def test_offline_check_does_not_change_the_process(monkeypatch):
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    monkeypatch.setattr(models, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(FERError):
        create_backbone("test_vit", pretrained=True)
    assert hub.HF_HUB_OFFLINE == before
