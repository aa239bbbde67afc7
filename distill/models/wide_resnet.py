"""Pre-activation Wide ResNets for CIFAR (Zagoruyko & Komodakis, 2016).

Follows the attention-transfer / RepDistiller implementation layer for layer, including
its module names (``block1.layer.0.convShortcut``, top-level ``bn1``/``relu``/``fc``),
so RepDistiller teacher checkpoints load with ``load_state_dict`` unchanged. Parameter
counts match RepDistiller exactly (WRN-40-2: 2,243,546 at 10 classes).

Deviation from that code: every ReLU is a separate, non-inplace ``nn.ReLU`` module, so
forward hooks on any layer capture activations that are not overwritten later.
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from ._cfg import ModelCfg
from ._head import PooledLinearClassifier
from ._registry import ModelFamily, no_named_weights, register_family, register_model

__all__ = [
    "WideResNet",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_16_4",
    "wrn_16_8",
    "wrn_28_10",
    "wrn_40_1",
    "wrn_40_2",
    "wrn_40_4",
]


class BasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 + shortcut.

    As in RepDistiller, dropout sits between the two convolutions (after the second
    ReLU), and when the shape changes the 1x1 shortcut conv reads the *pre-activated*
    input, whereas an identity shortcut carries the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes and stride == 1
        # camelCase kept for RepDistiller state-dict compatibility.
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(out)
        out = self.relu2(self.bn2(self.conv1(out)))
        out = self.conv2(self.dropout(out))
        return out + shortcut


class NetworkBlock(nn.Module):
    """One WRN group: ``num_layers`` blocks, the first one changing width/stride.

    Exists (rather than a bare ``nn.Sequential``) only to keep RepDistiller's
    ``blockN.layer.i`` parameter names.
    """

    def __init__(
        self, num_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float
    ):
        super().__init__()
        self.layer = nn.Sequential(
            *(
                BasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    drop_rate,
                )
                for i in range(num_layers)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(PooledLinearClassifier):
    """CIFAR WRN-``depth``-``widen_factor``.

    ``forward_features`` returns the post-``relu`` 8x8 map (at 32x32 input), which is
    exactly what global average pooling + ``fc`` consume, so ``cam_layer = "relu"`` and
    the closed-form Grad-CAM++ path applies (``has_pooled_linear_head = True``).

    Args:
        depth: Total depth; ``(depth - 4) % 6 == 0``.
        widen_factor: Width multiplier k (group widths 16k, 32k, 64k).
        num_classes: Classifier outputs.
        dropout: Dropout probability inside each block (0 disables it).
        default_cfg: Variant metadata; derived from the architecture when omitted.

    Raises:
        ValueError: If the depth or width is invalid.
    """

    cam_layer: str = "relu"

    def __init__(
        self,
        depth: int,
        widen_factor: int = 1,
        num_classes: int = 10,
        dropout: float = 0.0,
        default_cfg: ModelCfg | None = None,
    ):
        super().__init__()
        _check_wrn_args(depth, widen_factor)
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth = depth
        self.widen_factor = widen_factor
        self.num_classes = num_classes
        self.num_features = widths[3]
        self.default_cfg = default_cfg or ModelCfg(
            num_params=wrn_num_params(depth, widen_factor, num_classes=10)
        )

        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropout)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropout)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the last-stage map after the final BN-ReLU, ``[B, 64k, H/4, W/4]``."""
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        return self.relu(self.bn1(x))


def _check_wrn_args(depth: int, widen_factor: int) -> None:
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            f"Invalid WRN depth {depth}: need (depth - 4) % 6 == 0 and depth >= 10 "
            "(e.g. 10, 16, 22, 28, 40)."
        )
    if widen_factor < 1:
        raise ValueError(f"Invalid WRN widen factor {widen_factor}: must be >= 1.")


def wrn_num_params(depth: int, widen_factor: int, num_classes: int = 10) -> int:
    """Closed-form parameter count of WRN-depth-k.

    Independent of the module code, so tests can catch accidental architecture
    changes (e.g. a stray conv bias).
    """
    _check_wrn_args(depth, widen_factor)
    n = (depth - 4) // 6
    widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    total = 3 * 9 * widths[0]
    for cin, cout in zip(widths[:-1], widths[1:], strict=True):
        for i in range(n):
            c_in = cin if i == 0 else cout
            total += 2 * c_in + 9 * c_in * cout + 2 * cout + 9 * cout * cout
            if c_in != cout:  # 1x1 projection shortcut
                total += c_in * cout
    return total + 2 * widths[3] + widths[3] * num_classes + num_classes


def _wide_resnet(depth: int, widen_factor: int, **kwargs) -> WideResNet:
    """Build any valid WRN; used by the named builders and ``wrn_<d>_<k>`` parsing."""
    return WideResNet(depth, widen_factor, **kwargs)


def _cfg(num_params: int) -> ModelCfg:
    return ModelCfg(input_size=(3, 32, 32), pool_size=(8, 8), num_params=num_params)


@register_model
def wrn_16_1(*, num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-16-1 (0.18M params): the smallest common CIFAR student."""
    return _wide_resnet(16, 1, num_classes=num_classes, dropout=dropout, default_cfg=_cfg(175_066))


@register_model
def wrn_16_2(*, num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-16-2 (0.69M params): RepDistiller's student for the WRN-40-2 teacher."""
    return _wide_resnet(16, 2, num_classes=num_classes, dropout=dropout, default_cfg=_cfg(691_674))


@register_model
def wrn_16_4(*, num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-16-4 (2.75M params)."""
    return _wide_resnet(
        16, 4, num_classes=num_classes, dropout=dropout, default_cfg=_cfg(2_748_890)
    )


@register_model
def wrn_16_8(*, num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-16-8 (10.96M params): wide-but-shallow teacher."""
    return _wide_resnet(
        16, 8, num_classes=num_classes, dropout=dropout, default_cfg=_cfg(10_961_370)
    )


@register_model
def wrn_28_10(*, num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10 (36.5M params): the paper's strongest CIFAR model; a large teacher."""
    return _wide_resnet(
        28, 10, num_classes=num_classes, dropout=dropout, default_cfg=_cfg(36_479_194)
    )


@register_model
def wrn_40_1(*, num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-40-1 (0.56M params): RepDistiller's thin-deep student."""
    return _wide_resnet(40, 1, num_classes=num_classes, dropout=dropout, default_cfg=_cfg(563_930))


@register_model
def wrn_40_2(*, num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-40-2 (2.24M params): RepDistiller's standard CIFAR teacher."""
    return _wide_resnet(
        40, 2, num_classes=num_classes, dropout=dropout, default_cfg=_cfg(2_243_546)
    )


@register_model
def wrn_40_4(*, num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-40-4 (8.95M params)."""
    return _wide_resnet(
        40, 4, num_classes=num_classes, dropout=dropout, default_cfg=_cfg(8_949_210)
    )


_WRN_NAME = re.compile(r"^wrn_(\d+)_(\d+)$")


def _build_any_wrn(
    name: str, num_classes: int, weights: str | None, kwargs: dict
) -> WideResNet | None:
    """``wrn_<depth>_<width>`` for any depth and width the registered names do not cover."""
    match = _WRN_NAME.match(name.strip().lower())
    if match is None:
        return None
    if weights is not None:
        raise no_named_weights(name, weights)
    depth, width = int(match.group(1)), int(match.group(2))
    return _wide_resnet(depth, width, num_classes=num_classes, **kwargs)


def _check_any_wrn_weights(name: str, weights: str) -> bool:
    if _WRN_NAME.match(name.strip().lower()):
        raise no_named_weights(name, weights)
    return False


register_family(
    ModelFamily(
        "wrn_<depth>_<width>", order=10, build=_build_any_wrn, check_weights=_check_any_wrn_weights
    )
)
