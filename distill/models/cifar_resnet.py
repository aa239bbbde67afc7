"""CIFAR ResNets of He et al., 2016 (Sec. 4.2): resnet20/32/44/56/110.

Post-activation basic blocks, 16/32/64 channels, and the paper's *option A* shortcut:
parameter-free strided subsampling plus zero channel padding, which is what gives the
published parameter counts (resnet20: 0.27M, resnet56: 0.85M, resnet110: 1.7M). Note
RepDistiller's ``resnet20`` etc. use 1x1 projection shortcuts instead and therefore
have slightly more parameters; their checkpoints do not load here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._cfg import ModelCfg
from ._head import PooledLinearClassifier
from ._registry import register_model

__all__ = [
    "CifarResNet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially by ``stride`` and zero-pad channels.

    A module (not a lambda) so the model pickles and the shortcut is addressable by
    name like every other layer.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad_front = (out_planes - in_planes) // 2
        self.pad_back = out_planes - in_planes - self.pad_front

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


class BasicBlock(nn.Module):
    """Post-activation block: conv-BN-ReLU-conv-BN, add shortcut, ReLU.

    The block output already includes its final ReLU, so the last block's output is
    the map that global average pooling consumes.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            PadShortcut(in_planes, planes, stride)
            if stride != 1 or in_planes != planes
            else nn.Identity()
        )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(PooledLinearClassifier):
    """ResNet-(6n+2) for 32x32 inputs.

    ``cam_layer`` is the last block of ``layer3`` (e.g. ``"layer3.2"`` for resnet20):
    its output is post-ReLU and goes straight into global average pooling and ``fc``,
    so the closed-form Grad-CAM++ path applies (``has_pooled_linear_head = True``).

    Args:
        depth: Total depth; ``(depth - 2) % 6 == 0``.
        num_classes: Classifier outputs.
        default_cfg: Variant metadata.

    Raises:
        ValueError: If the depth is invalid.
    """

    def __init__(self, depth: int, num_classes: int = 10, default_cfg: ModelCfg | None = None):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"Invalid CIFAR ResNet depth {depth}: need (depth - 2) % 6 == 0.")
        n = (depth - 2) // 6
        self.depth = depth
        self.num_classes = num_classes
        self.num_features = 64
        self.cam_layer = f"layer3.{n - 1}"
        self.default_cfg = default_cfg or ModelCfg(input_size=(3, 32, 32), pool_size=(8, 8))

        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(16, 16, n, stride=1)
        self.layer2 = self._make_layer(16, 32, n, stride=2)
        self.layer3 = self._make_layer(32, 64, n, stride=2)
        self.fc = nn.Linear(64, num_classes)
        self._init_weights()

    @staticmethod
    def _make_layer(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        # He et al. init as in the widely used reference port (kaiming on conv and fc).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the last block's (post-ReLU) output, ``[B, 64, H/4, W/4]``."""
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


def _cifar_resnet(depth: int, **kwargs) -> CifarResNet:
    return CifarResNet(depth, **kwargs)


def _cfg(num_params: int) -> ModelCfg:
    return ModelCfg(input_size=(3, 32, 32), pool_size=(8, 8), num_params=num_params)


@register_model
def resnet20(*, num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (0.27M params)."""
    return _cifar_resnet(20, num_classes=num_classes, default_cfg=_cfg(269_722))


@register_model
def resnet32(*, num_classes: int = 10) -> CifarResNet:
    """ResNet-32 (0.46M params)."""
    return _cifar_resnet(32, num_classes=num_classes, default_cfg=_cfg(464_154))


@register_model
def resnet44(*, num_classes: int = 10) -> CifarResNet:
    """ResNet-44 (0.66M params)."""
    return _cifar_resnet(44, num_classes=num_classes, default_cfg=_cfg(658_586))


@register_model
def resnet56(*, num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (0.85M params): a common CIFAR teacher for resnet20 students."""
    return _cifar_resnet(56, num_classes=num_classes, default_cfg=_cfg(853_018))


@register_model
def resnet110(*, num_classes: int = 10) -> CifarResNet:
    """ResNet-110 (1.73M params)."""
    return _cifar_resnet(110, num_classes=num_classes, default_cfg=_cfg(1_727_962))
