"""Architectures the toolkit does not know, built by import path in the tests
(``teacher.name=tests.custom_models:HeadNotFc``): each breaks one assumption of the built-in
families."""

from __future__ import annotations

from torch import Tensor, nn


def _trunk(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(inplace=True),
    )


class HeadNotFc(nn.Module):
    """Global-average pooling and a linear head named ``out`` (not ``fc``)."""

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.features = _trunk(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.pool(self.features(x)).flatten(1))


class ExtraLayerAfterPooling(nn.Module):
    """A hidden layer between the pooling and the classifier: no closed form."""

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.features = _trunk(width)
        self.hidden = nn.Linear(2 * width, 2 * width)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.features(x).mean(dim=(2, 3))
        return self.classifier(self.hidden(pooled).relu())


class MapNotLast(nn.Module):
    """The map that feeds the pooling is followed by a later ``[B, C, H, W]`` module (an
    auxiliary branch that the logits do not use), and the classifier is the last module."""

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.body = _trunk(width)
        self.aux = nn.Conv2d(2 * width, 1, 1)  # e.g. a saliency branch, not fed to the head
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        feature_map = self.body(x)
        self.aux(feature_map)  # runs after the map that feeds the pooling; its result is unused
        return self.head(feature_map.mean(dim=(2, 3)))


def head_not_fc(num_classes: int, **kwargs) -> HeadNotFc:
    """A builder function rather than a class (both are callables)."""
    return HeadNotFc(num_classes, **kwargs)
