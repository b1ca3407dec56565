"""Backbones behind one protocol (ViT, ResNet), their families, and checkpoint reading and export
(facerep, MoCo v3, MAE, MCF, timm, Hugging Face and ONNX layouts; packaged weights by name), named
architectures and checkpoints (:func:`create_model`) and the Hugging Face Hub layout
(:mod:`facerep.backbones.hub`)."""

from facerep.backbones import resnet, vit  # noqa: F401  (register the families)
from facerep.backbones.base import (
    FAMILIES,
    Backbone,
    BackboneFamily,
    arch_record,
    backbone_from_record,
    build_backbone,
)
from facerep.backbones.hub import (
    ARCHITECTURES,
    CHECKPOINTS,
    HubResNet,
    HubViT,
    create_model,
    from_pretrained,
    save_pretrained,
)
from facerep.backbones.io import (
    FORMATS,
    PACKAGED,
    CheckpointError,
    export_backbone,
    load_backbone,
    read_backbone_state,
    resolve_weights,
)
from facerep.backbones.resnet import ResNet, ResNetArch, build_resnet
from facerep.backbones.vit import MaskedViT, ViTArch, build_vit

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINTS",
    "FAMILIES",
    "FORMATS",
    "PACKAGED",
    "Backbone",
    "BackboneFamily",
    "CheckpointError",
    "HubResNet",
    "HubViT",
    "MaskedViT",
    "ResNet",
    "ResNetArch",
    "ViTArch",
    "arch_record",
    "backbone_from_record",
    "build_backbone",
    "build_resnet",
    "build_vit",
    "create_model",
    "export_backbone",
    "from_pretrained",
    "load_backbone",
    "read_backbone_state",
    "resolve_weights",
    "save_pretrained",
]
