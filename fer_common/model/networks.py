"""The two models. Both map a face batch to (logits, embedding); return_embedding=True gives the embedding alone."""

import contextlib
import socket
import sys
from pathlib import Path

import torch
import torch.nn as nn

from fer_common.errors import FERError
from fer_common.labels import NUM_CLASSES
from fer_common.model.config import DEFAULT_BACKBONE
from fer_common.preprocess import ADVANCED_PREPROCESSING, DEFAULT_PREPROCESSING
from fer_common.model_info import check_model_type



def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FERNet(nn.Module):
    """The default model: a VGG-style CNN for 1 x 48 x 48 grayscale faces.

    Four stages of two 3x3 conv-BN-ReLU layers, each followed by 2x2 max pooling
    (48 -> 24 -> 12 -> 6 -> 3), global average pooling, a 128-d embedding layer, a linear classifier.
    VGG-style nets are the strongest single models published on FER-2013; plain 3x3 convs are
    also what CPUs and ONNX Runtime run fastest per FLOP.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, embedding_dim: int = 128, in_chans: int = 1,
                 widths: tuple = (40, 80, 160, 320), dropout: float = 0.3):
        super().__init__()
        layers, cin = [], in_chans
        for i, width in enumerate(widths):
            # The first stage runs at full 48x48 resolution, so it gets a single conv to save FLOPs.
            layers += [conv_bn(cin, width)] + ([] if i == 0 else [conv_bn(width, width)]) + [nn.MaxPool2d(2)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, embedding_dim),
                                       nn.BatchNorm1d(embedding_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embedding_dim, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)         # N, widths[-1]

    def forward_head(self, features: torch.Tensor):
        embedding = self.embedding(features)                    # N, embedding_dim
        return self.classifier(embedding), embedding           # N, num_classes

    def forward(self, x: torch.Tensor, return_embedding: bool = False):
        logits, embedding = self.forward_head(self.forward_features(x))
        return embedding if return_embedding else (logits, embedding)


class AdvancedFER(nn.Module):
    """The advanced model: a timm backbone (Swin-Base by default), pooled, projected to a 128-d embedding.

    timm pools each backbone's last feature map the right way for it (Swin's is channels-last,
    N x 7 x 7 x C, and is averaged over its spatial axes), so any timm model name works here.
    The constructor's keyword arguments are the model_config a checkpoint stores (rebuilt by create_model),
    so they stay flat, eight of them, rather than an options object.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, embedding_dim: int = 128,
                 backbone: str = DEFAULT_BACKBONE, hidden_dim: int = 512, dropout: float = 0.3,
                 pretrained: bool = False, pretrained_weights: str | None = None, backbone_kwargs: dict | None = None):
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained, pretrained_weights, **(backbone_kwargs or {}))
        self.embedding = nn.Sequential(
            nn.Linear(self.backbone.num_features, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, embedding_dim))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embedding_dim, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)                                 # N, num_features (pooled by timm)

    def forward_head(self, features: torch.Tensor):
        embedding = self.embedding(features)                    # N, embedding_dim
        return self.classifier(embedding), embedding

    def forward(self, x: torch.Tensor, return_embedding: bool = False):
        logits, embedding = self.forward_head(self.forward_features(x))
        return embedding if return_embedding else (logits, embedding)


def create_backbone(name: str, pretrained: bool = False, pretrained_weights: str | None = None, **kwargs) -> nn.Module:
    """A headless timm model (num_classes=0: pooled features out), with ImageNet weights if asked."""
    import timm

    if not timm.is_model(name):
        raise FERError(f"timm does not know the backbone '{name}' (see timm.list_models(), e.g. swin_tiny_patch4_window7_224)")
    if pretrained_weights:
        # Loaded strictly by us: timm's own loader only warns about weights that do not fit (strict=False).
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        load_backbone_weights(model, pretrained_weights)
        return model
    try:
        # Offline, the hub client would retry for a minute: let it use its local cache only, for this call.
        with _hub_offline(pretrained and not _hub_reachable()):
            return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        if not pretrained:
            raise
        raise FERError(f"could not download ImageNet weights for {name} (offline?): give a local file with "
                       f"--pretrained_weights PATH, or train from scratch with --no_pretrained") from None


def load_backbone_weights(backbone: torch.nn.Module, path) -> None:
    """Load a timm or torchvision state dict of `backbone` from `path` (.pth/.pt/.bin or .safetensors), strictly:
    every weight of the backbone must be in the file with its shape. Only the file's classifier head, which a
    headless backbone no longer has, may be left over. Weights of another model are an error, not a warning."""
    path = Path(path)
    if not path.is_file():
        raise FERError(f"pretrained weights file not found: {path}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file
            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FERError(f"--pretrained_weights {path} is not a readable weights file "
                       f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:150]})") from None
    for key in ("state_dict", "model", "model_state_dict"):     # training checkpoints wrap the weights
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise FERError(f"--pretrained_weights {path} holds no state dict (a dict of weight tensors)")
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    if all(k.startswith("backbone.") for k in state):            # a whole AdvancedFER's backbone part
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
    own = backbone.state_dict()
    # timm's own conversion (torchvision or original-repo key names -> timm's), as its loader would apply.
    convert = getattr(sys.modules.get(type(backbone).__module__), "checkpoint_filter_fn", None)
    if convert is not None and any(k not in own for k in state):
        try:
            converted = convert(dict(state), backbone)
            if isinstance(converted, dict) and converted:
                state = converted
        except Exception:   # not convertible: the checks below say what does not fit
            pass
    missing = [k for k in own if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    head = ("head", "fc.", "classifier", "last_linear")
    extra = [k for k in state if k not in own and not any(h in k for h in head)]
    if missing or wrong or extra:
        what = (f"{len(missing)} of its {len(own)} weights are missing (e.g. {missing[0]})" if missing
                else f"shapes differ ({wrong[0]})" if wrong else f"it has weights the backbone lacks (e.g. {extra[0]})")
        raise FERError(f"--pretrained_weights {path} does not fit the backbone: {what}; is it the state dict of "
                       f"this --backbone?")
    backbone.load_state_dict({k: state[k] for k in own})


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Make the Hugging Face hub client cache-only inside the block, and restore its setting after."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hub
    saved = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = saved


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


NETWORKS = {"default": FERNet, "advanced": AdvancedFER}      # model_info.MODEL_TYPES -> its class


def create_model(model_type: str, **config) -> nn.Module:
    """Build a model by type from its constructor arguments (as stored in a checkpoint's model_config)."""
    check_model_type(model_type, "create_model")
    return NETWORKS[model_type](**config)


def default_preprocessing(model_type: str, model: nn.Module | None = None) -> dict:
    """The preprocessing a freshly built model expects; for timm backbones, from the backbone's own config."""
    if model_type == "default":
        return dict(DEFAULT_PREPROCESSING)
    prep = dict(ADVANCED_PREPROCESSING)
    if model is not None:
        import timm.data
        cfg = timm.data.resolve_model_data_config(model.backbone)
        prep.update(input_size=list(cfg["input_size"][1:]), mean=list(cfg["mean"]), std=list(cfg["std"]))
    return prep


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
