"""Downstream (transfer) datasets under FaRL's benchmark protocol: alignment, parsing, classification, and
face anti-spoofing (video frames, OCIM cross-domain protocols).

``build_dataset(name, root, split, **kwargs)`` returns a :class:`FaceDataset` whose items are dicts
(``"image"`` [H, W, 3] uint8 RGB, ``"name"``, and per task ``"landmarks"`` / ``"box"`` / ``"mask"`` /
``"label"``; see :mod:`facerep.data.downstream.base`). Each dataset reads its official on-disk layout
(see the module of each family for the exact files and conventions).

=====================  ==============  ===================================================  ===============
name                   task            root layout                                          splits
=====================  ==============  ===================================================  ===============
aflw19                 alignment (19)  AFLWinfo_release.mat, flickr/ (or data/flickr/)      train, test
wflw                   alignment (98)  WFLW_images/, WFLW_annotations/... or HRNet csv      train, test
300w                   alignment (68)  HRNet face_landmarks_300w_*.csv, images/             train, test,
                                                                                            private_test
lapa                   parsing (11)    {split}/images, labels, landmarks                    train, val, test
celebamask_hq          parsing (19)    CelebA-HQ-img/, CelebAMask-HQ-mask-anno/, lists      train, val, test
celeba_attr            classif. (40)   img_align_celeba/, list_attr_celeba.txt, partition   train, val, test
rafdb                  classif. (7)    EmoLabel/list_patition_label.txt, Image/aligned/     train, test
affectnet              classif. (7/8)  Manually_Annotated_file_lists/, ..._Images/          train, test
generic                any             images + one CSV / JSON                              any
synthetic_alignment    alignment (68)  none (rendered)                                      train, val, test
synthetic_parsing      parsing (11)    none (rendered)                                      train, val, test
synthetic_attributes   classif. (8)    none (rendered)                                      train, val, test
oulu_npu               antispoof       {Train,Dev,Test}_files/*.avi + .txt, Protocols/      train, dev, test
casia_fasd             antispoof       {train,test}_release/<subject>/*.avi                 train, dev, test
replay_attack          antispoof       {train,devel,test}/{real,attack}, face-locations/    train, dev, test
msu_mfsd               antispoof       scene01/{real,attack}, {train,test}_sub_list.txt     train, dev, test
ocim                   antispoof       oulu_npu/ casia_fasd/ replay_attack/ msu_mfsd/       train, dev, test
synthetic_antispoof    antispoof       none (rendered)                                      train, dev, test
=====================  ==============  ===================================================  ===============
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from facerep.data.downstream.affectnet import AFFECTNET_CLASSES, AffectNet
from facerep.data.downstream.alignment import AFLW19, IBUG300W, WFLW, WFLW_ATTRIBUTES
from facerep.data.downstream.antispoof import OCIM, SyntheticAntispoof
from facerep.data.downstream.antispoof_readers import CasiaFASD, MsuMFSD, OuluNPU, ReplayAttack
from facerep.data.downstream.base import FaceDataset
from facerep.data.downstream.classification import RAFDB, RAFDB_CLASSES, CelebAAttributes
from facerep.data.downstream.generic import GenericDataset
from facerep.data.downstream.parsing import (
    CELEBAMASK_CLASSES,
    CELEBAMASK_PARTS,
    FARL_CELEBAMASK_NAMES,
    LAPA_ALIGN_POINTS,
    CelebAMaskHQ,
    LaPa,
)
from facerep.data.downstream.synthetic import SyntheticAlignment, SyntheticAttributes, SyntheticParsing
from facerep.data.sources import DataError
from facerep.runtime.registry import Registry

__all__ = [
    "AFFECTNET_CLASSES",
    "AFLW19",
    "CELEBAMASK_CLASSES",
    "CELEBAMASK_PARTS",
    "DATASETS",
    "FARL_CELEBAMASK_NAMES",
    "IBUG300W",
    "LAPA_ALIGN_POINTS",
    "OCIM",
    "RAFDB",
    "RAFDB_CLASSES",
    "WFLW",
    "WFLW_ATTRIBUTES",
    "AffectNet",
    "CasiaFASD",
    "CelebAAttributes",
    "CelebAMaskHQ",
    "FaceDataset",
    "GenericDataset",
    "LaPa",
    "MsuMFSD",
    "OuluNPU",
    "ReplayAttack",
    "SyntheticAlignment",
    "SyntheticAntispoof",
    "SyntheticAttributes",
    "SyntheticParsing",
    "build_dataset",
]

DATASETS: Registry[Callable[..., FaceDataset]] = Registry("downstream dataset", DataError)
for _cls in (AFLW19, WFLW, IBUG300W, LaPa, CelebAMaskHQ, CelebAAttributes, RAFDB, AffectNet, GenericDataset,
             SyntheticAlignment, SyntheticParsing, SyntheticAttributes):  # fmt: skip
    DATASETS.add(_cls.dataset_name, _cls)
for _cls in (OuluNPU, CasiaFASD, ReplayAttack, MsuMFSD, SyntheticAntispoof, OCIM):  # anti-spoofing
    DATASETS.add(_cls.dataset_name, _cls)


def build_dataset(name: str, root: str | Path | None, split: str, **kwargs: Any) -> FaceDataset:
    """Dataset ``name`` (a key of :data:`DATASETS`) read from ``root``, split ``split``.

    Unknown names, splits or keyword arguments are one-line :class:`DataError` s.
    """
    factory = DATASETS.get(name)
    try:
        inspect.signature(factory).bind(root, split, **kwargs)
    except TypeError as err:
        raise DataError(f"{name}: bad arguments {sorted(kwargs)}: {err}") from err
    return factory(root, split, **kwargs)
