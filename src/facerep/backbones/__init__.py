"""Backbones behind one protocol (ViT, ResNet), their families, and checkpoint reading and export."""

from facerep.backbones import resnet, vit  # noqa: F401  (register the families)
from facerep.backbones.base import (
    FAMILIES,
    Backbone,
    BackboneFamily,
    arch_record,
    backbone_from_record,
    build_backbone,
)
from facerep.backbones.io import FORMATS, CheckpointError, export_backbone, load_backbone, read_backbone_state
from facerep.backbones.resnet import ResNet, ResNetArch, build_resnet
from facerep.backbones.vit import MaskedViT, ViTArch, build_vit

__all__ = [
    "FAMILIES",
    "FORMATS",
    "Backbone",
    "BackboneFamily",
    "CheckpointError",
    "MaskedViT",
    "ResNet",
    "ResNetArch",
    "ViTArch",
    "arch_record",
    "backbone_from_record",
    "build_backbone",
    "build_resnet",
    "build_vit",
    "export_backbone",
    "load_backbone",
    "read_backbone_state",
]
