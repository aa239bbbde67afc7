"""RepDistiller's 4x-wide CIFAR ResNets, ``resnet8x4`` and ``resnet32x4``: the teacher/student
pair of the CIFAR-100 distillation tables (RepDistiller, mdistiller, CAT-KD, LSKD).

Three stages of post-activation basic blocks after a 3x3 stem of 32 channels, with 64, 128
and 256 channels ("[32, 64, 128, 256]"), ``(depth - 2) / 6`` blocks a stage, and 1x1
convolution + BN projection shortcuts wherever the shape changes (so not He et al.'s option A
of :mod:`distill.models.cifar_resnet`). Parameter counts with a 100-class head:
resnet8x4 1,233,540, resnet32x4 7,433,860 (RepDistiller's README: 1.23M and 7.43M).
"""

from __future__ import annotations

from torch import Tensor, nn

from ._cfg import ModelCfg
from ._head import PooledLinearClassifier
from ._registry import register_model

__all__ = ["WideCifarResNet", "resnet8x4", "resnet32x4"]

WIDTHS = (32, 64, 128, 256)


class ProjectionBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut (a 1x1 conv + BN where the shape changes),
    then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class WideCifarResNet(PooledLinearClassifier):
    """ResNet-(6n+2) with ``WIDTHS`` channels; ``cam_layer`` is the last block of ``layer3``
    (post-ReLU, feeding global average pooling and ``fc``: the closed-form maps apply)."""

    def __init__(self, depth: int, num_classes: int = 10, default_cfg: ModelCfg | None = None):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"Invalid CIFAR ResNet depth {depth}: need (depth - 2) % 6 == 0.")
        n = (depth - 2) // 6
        self.depth = depth
        self.num_classes = num_classes
        self.num_features = WIDTHS[3]
        self.cam_layer = f"layer3.{n - 1}"
        self.default_cfg = default_cfg or ModelCfg(input_size=(3, 32, 32), pool_size=(8, 8))
        self.conv1 = nn.Conv2d(3, WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(WIDTHS[0], WIDTHS[1], n, stride=1)
        self.layer2 = self._make_layer(WIDTHS[1], WIDTHS[2], n, stride=2)
        self.layer3 = self._make_layer(WIDTHS[2], WIDTHS[3], n, stride=2)
        self.fc = nn.Linear(WIDTHS[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [ProjectionBlock(in_planes, planes, stride)]
        blocks += [ProjectionBlock(planes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last block's (post-ReLU) output, ``[B, 256, H/4, W/4]``."""
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


def _cfg(num_params: int) -> ModelCfg:
    return ModelCfg(input_size=(3, 32, 32), pool_size=(8, 8), num_params=num_params)


@register_model
def resnet8x4(*, num_classes: int = 10) -> WideCifarResNet:
    """RepDistiller's ResNet-8x4 (1.23M params at 100 classes): the standard CIFAR student."""
    return WideCifarResNet(8, num_classes=num_classes, default_cfg=_cfg(1_210_410))


@register_model
def resnet32x4(*, num_classes: int = 10) -> WideCifarResNet:
    """RepDistiller's ResNet-32x4 (7.43M params at 100 classes): the standard CIFAR teacher."""
    return WideCifarResNet(32, num_classes=num_classes, default_cfg=_cfg(7_410_730))
