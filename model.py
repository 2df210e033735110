"""Age regressors: the seed's SimpleCNN, its BatchNorm, deeper and global-pooling variants, and torchvision ResNets.

Every model maps a normalised N x 3 x S x S batch to `outputs` numbers per image:
- head "regression": one number, the age;
- head "distribution": logits over the integer ages min_age..max_age; the age is the expected value
  of their softmax (DLDL-style label distribution learning).
`AgeModel.predict()` turns either into ages, so training, evaluation and exports share one rule.
The wrappers around them live here too (ExportedAgeModel, AutocastModel): this is the one module that
imports torch as it loads; the others import it on first use, so `--help` answers without it.
"""
import torch
import torch.nn as nn

from cli import MODEL_NAMES
from custom_dataset import normalize


class SimpleCNN(nn.Module):
    """The seed's network: 4 x (Conv3x3 + ReLU + MaxPool2) with 16/32/64/128 filters, FC 64, FC out.

    128x128x3 -> 64x64x16 -> 32x32x32 -> 16x16x64 -> 8x8x128 -> 8192 -> 64 -> output_nodes.
    extra_conv (`simplecnn_deep`) adds a fifth 3x3 conv, 128 -> 128 with ReLU, at the last resolution:
    a deeper feature stack for +147,584 weights and about +15 % of the convolution work (it runs on the
    8x8 map), while the 8192 -> 64 layer that keeps where on the face a feature is stays as it is.
    """

    def __init__(self, input_dim=3, output_nodes=1, image_size=128, batch_norm=False, dropout=0.0,
                 pool_before_relu=True, extra_conv=False):
        super().__init__()
        layers, channels = [], input_dim
        for width in (16, 32, 64, 128):
            layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            # pool before ReLU: the same numbers as the seed's ReLU-then-pool (ReLU is monotone, so
            # max(relu(x)) == relu(max(x))), but ReLU touches a quarter of the values (+5 % training
            # images/s in `benchmark.py --probes`). Parameter names are the same in both orders, so
            # checkpoints load either way; pool_before_relu=False is the seed's order, for comparisons.
            pair = [nn.MaxPool2d(2), nn.ReLU(inplace=True)]
            layers += pair if pool_before_relu else pair[::-1]
            channels = width
        if extra_conv:  # appended, so a plain SimpleCNN's parameter names (and checkpoints) are unchanged
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        flat = 128 * (image_size // 16) ** 2
        self.regressor = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, 64),
                                       nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(64, output_nodes))

    def forward(self, x):
        return self.regressor(self.features(x))



class SimpleCNNGap(nn.Module):
    """SimpleCNN's four blocks, a fifth 3x3 conv with 256 filters at 8x8, then global average pooling
    straight into the output layer: no 8192 -> 64 layer, which holds 84 % of SimpleCNN's weights.
    It underfits (RESULTS.md, tuned_gap: val MAE +0.43 at 40 epochs), so it is not a default. 128x128x3 -> ... -> 8x8x128 -> 8x8x256 -> 256 -> output_nodes.
    About as fast to train as SimpleCNN on a CPU (same convolution work within a third; BatchNorm would
    cost 30 %, so there is none) with two thirds of its parameters. Works at any input size."""

    def __init__(self, input_dim=3, output_nodes=1, dropout=0.0, widths=(16, 32, 64, 128, 256)):
        super().__init__()
        layers, channels = [], input_dim
        for i, width in enumerate(widths):
            layers.append(nn.Conv2d(channels, width, 3, padding=1))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            layers.append(nn.ReLU(inplace=True))
            channels = width
        self.features = nn.Sequential(*layers)
        self.regressor = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                       nn.Linear(channels, output_nodes))

    def forward(self, x):
        return self.regressor(self.features(x))

def _resnet(name, outputs, pretrained=False, weights_file=None):
    import torchvision
    builder = getattr(torchvision.models, name)
    weights = None
    if pretrained and not weights_file:
        enum = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        try:
            # read as data: torchvision's own call would unpickle whatever lies in the download cache
            # ($TORCH_HOME, perhaps shared), where the hash is checked only at download time
            net = builder(weights=None)
            net.load_state_dict(enum.get_state_dict(progress=True, check_hash=True, weights_only=True))
        except Exception as exc:  # offline, proxy, corrupt download: one clear line, not a traceback
            raise RuntimeError(
                f"could not download ImageNet weights for {name} ({type(exc).__name__}); with no network, "
                f"download {enum.url} elsewhere and pass --weights FILE, or drop --pretrained") from None
    else:
        net = builder(weights=weights)
    if weights_file:
        try:
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
        except Exception as exc:  # text, a pickle of code, a cut-short download: one line, not a traceback
            raise RuntimeError(f"--weights {weights_file} is not a torch weights file ({type(exc).__name__}); pass "
                               f"torchvision's {name} ImageNet .pth") from None
        state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise RuntimeError(f"--weights {weights_file} holds a {type(state).__name__}, not a dict of {name} "
                               "weights; pass torchvision's ImageNet .pth")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # ImageNet head is replaced
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("fc.")]:
            raise RuntimeError(f"{weights_file} does not hold {name} weights "
                               f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    net.fc = nn.Linear(net.fc.in_features, outputs)
    return net


class AgeModel(nn.Module):
    """A backbone plus the rule that turns its outputs into ages."""

    def __init__(self, backbone: nn.Module, head: str, min_age: int, max_age: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        grid = torch.arange(min_age, max_age + 1, dtype=torch.float32) if head == "distribution" else torch.zeros(1)
        self.register_buffer("age_grid", grid)

    def forward(self, x):
        return self.backbone(x)

    @torch.no_grad()
    def init_output_bias(self, age: float):
        """Start a regression head at the mean training age instead of 0, so the first epochs learn
        faces rather than the age scale."""
        last = [m for m in self.backbone.modules() if isinstance(m, nn.Linear)][-1]
        last.bias.fill_(age)

    def ages_from_outputs(self, outputs):
        if self.head == "distribution":
            return torch.softmax(outputs, dim=1) @ self.age_grid
        return outputs[:, 0]

    def predict(self, x):
        return self.ages_from_outputs(self.forward(x))

    def ages_and_spread(self, outputs):
        """(ages, spread): the ages of ages_from_outputs and the standard deviation (years) of a
        distribution head's predicted age distribution, from one softmax; a regression head has no
        spread (None)."""
        if self.head != "distribution":
            return outputs[:, 0], None
        probs = torch.softmax(outputs, dim=1)
        ages = probs @ self.age_grid
        return ages, (probs * (self.age_grid[None] - ages[:, None]) ** 2).sum(1).sqrt()


def build_model(name: str, head: str = "regression", min_age: int = 0, max_age: int = 100,
                image_size: int = 128, pretrained: bool = False, weights_file=None, dropout: float = 0.0):
    """Model by name; `outputs` follows the head (1, or one logit per integer age)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if head not in ("regression", "distribution"):
        raise ValueError(f"unknown head {head!r}; choose regression or distribution")
    outputs = 1 if head == "regression" else max_age - min_age + 1
    if name == "simplecnn":
        backbone = SimpleCNN(3, outputs, image_size, dropout=dropout)
    elif name == "simplecnn_bn":
        backbone = SimpleCNN(3, outputs, image_size, batch_norm=True, dropout=dropout or 0.3)
    elif name == "simplecnn_deep":
        backbone = SimpleCNN(3, outputs, image_size, dropout=dropout, extra_conv=True)
    elif name == "simplecnn_gap":
        backbone = SimpleCNNGap(3, outputs, dropout=dropout)
    else:
        backbone = _resnet(name, outputs, pretrained, weights_file)
    if weights_file and name.startswith("simplecnn"):
        raise ValueError("--weights is for ResNet ImageNet weights; resume a SimpleCNN run with --resume")
    return AgeModel(backbone, head, min_age, max_age)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class ExportedAgeModel(nn.Module):
    """Input: float N x 3 x S x S RGB in 0-255 (already resized/denoised by custom_dataset.preprocess_rgb).
    Output: ages (N,). Normalisation is inside, so exports need no statistics from elsewhere."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x):
        return self.model.predict(normalize(x, self.mean, self.std))


class Forwarding:
    """Attributes the wrapper lacks (head, ages_from_outputs, age_grid, predict...) come from the model."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = super().__getattr__(self._inner_name)
            return getattr(inner, name)


def bf16_autocast_pays(device_type: str) -> bool:
    """Whether bf16 autocast speeds training up on this device: on CUDA, and on a CPU whose oneDNN
    computes in bf16 natively (AVX-512 BF16 or AMX; RESULTS.md's probes measure the gain). Elsewhere the
    CPU would emulate bf16, slower than float32."""
    if device_type == "cuda":
        return True
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private check: absent from other builds means "no"
        return False


class AutocastModel(Forwarding, nn.Module):
    """forward under bf16 autocast (CUDA, or a CPU with native bf16), outputs back in float32 so losses
    and metrics stay float32.
    Only the training step sees it; evaluation, checkpoints and exports use the plain model."""
    _inner_name = "model"

    def __init__(self, model, device_type="cuda", dtype=torch.bfloat16):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x).float()
