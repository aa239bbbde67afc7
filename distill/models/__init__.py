"""Model zoo for explanation-matching distillation.

Importing this package registers every family. Build models by name::

    from distill.models import build_model

    teacher = build_model("wrn_40_2", num_classes=100)
    student = build_model("wrn_16_2", num_classes=100)
    other = build_model("resnet18", num_classes=10)  # torchvision, random init
    tuned = build_model("resnet18", num_classes=10, weights="IMAGENET1K_V1")  # new 10-class head
    mine = build_model("resnet18", num_classes=10, weights="teacher.pth")  # a plain state_dict
    timm_net = build_model("timm/resnet50.a1_in1k", num_classes=10)  # pip install 'distill[timm]'
    vit = build_model("vit_tiny_p4_32", num_classes=10)  # small ViT for 32x32 images
    deit = build_model("timm/deit_tiny_distilled_patch16_224", num_classes=10)  # needs timm
    yours = build_model("mypkg.nets:Net", num_classes=10)  # any importable nn.Module

Every model exposes ``forward_features`` / ``forward_head`` / ``get_classifier``,
``num_features``, ``num_classes``, ``cam_layer`` (the module whose output is the map
Grad-CAM++ explains), ``has_pooled_linear_head`` and ``default_cfg``. Vision transformers
also declare ``token_layout(image_size)`` (prefix tokens, patch grid); their
``forward_features`` returns tokens (see :mod:`distill.models.transformers`).
"""

# Every family file, imported for its registrations (the registry imports none of them).
from . import (  # noqa: F401
    cifar_resnet,
    cifar_resnet_x4,
    timm_models,
    torchvision_models,
    transformers,
    vit,
    wide_resnet,
)
from ._build import build_model, check_weights
from ._cfg import TIMM_PREFIX, ModelCfg
from ._registry import get_model, list_models, register_model
from .cifar_resnet import CifarResNet
from .imported import ImportedClassifier
from .torchvision_models import TorchvisionClassifier
from .transformers import TimmTransformer, TorchvisionSwin, TorchvisionViT
from .vit import SmallViT
from .weights import WeightsError, load_weights, read_state_dict
from .wide_resnet import WideResNet

__all__ = [
    "CifarResNet",
    "ImportedClassifier",
    "ModelCfg",
    "SmallViT",
    "TIMM_PREFIX",
    "TimmTransformer",
    "TorchvisionClassifier",
    "TorchvisionSwin",
    "TorchvisionViT",
    "WeightsError",
    "WideResNet",
    "build_model",
    "check_weights",
    "get_model",
    "list_models",
    "load_weights",
    "read_state_dict",
    "register_model",
]
