"""The trunk/head contract shared by the CIFAR families."""

from __future__ import annotations

from torch import Tensor, nn


class PooledLinearClassifier(nn.Module):
    """Global average pooling then ``self.fc``, after a subclass's ``forward_features``.

    Declaring ``has_pooled_linear_head`` lets Grad-CAM(++) at ``cam_layer`` (the layer whose
    output ``forward_features`` returns) use its closed form.
    """

    has_pooled_linear_head: bool = True
    fc: nn.Linear

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global-average-pool the map, then apply ``fc`` unless ``pre_logits``."""
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.fc
