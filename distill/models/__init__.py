"""Model zoo for explanation-matching distillation.

Importing this package registers every family. Build models by name::

    from distill.models import build_model

    teacher = build_model("wrn_40_2", num_classes=100)
    student = build_model("wrn_16_2", num_classes=100)
    other = build_model("resnet18", num_classes=10)  # torchvision, random init

Every model exposes ``forward_features`` / ``forward_head`` / ``get_classifier``,
``num_features``, ``num_classes``, ``cam_layer`` (the module whose output is the map
Grad-CAM++ explains), ``has_pooled_linear_head`` and ``default_cfg``.
"""

from . import cifar_resnet, torchvision_models, wide_resnet  # noqa: F401  (registration)
from ._registry import ModelCfg, build_model, get_model, list_models, register_model
from .cifar_resnet import CifarResNet
from .torchvision_models import TorchvisionClassifier
from .wide_resnet import WideResNet

__all__ = [
    "CifarResNet",
    "ModelCfg",
    "TorchvisionClassifier",
    "WideResNet",
    "build_model",
    "get_model",
    "list_models",
    "register_model",
]
