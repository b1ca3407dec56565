"""Functional evaluation metrics for face alignment, parsing, classification (FaRL conventions) and
anti-spoofing (SSDG / ISO/IEC 30107-3 conventions)."""

from facerep.metrics.antispoof import antispoof_scores
from facerep.metrics.classification import accuracy, attribute_accuracy, mean_class_accuracy
from facerep.metrics.landmarks import (
    UNIT_LANDMARKS,
    UNIT_SCHEMES,
    ced_auc_fr,
    landmark_summary,
    nme,
    unit_distance,
)
from facerep.metrics.parsing import ConfusionAccumulator, confusion_matrix, parsing_scores

__all__ = [
    "UNIT_LANDMARKS",
    "UNIT_SCHEMES",
    "ConfusionAccumulator",
    "accuracy",
    "antispoof_scores",
    "attribute_accuracy",
    "ced_auc_fr",
    "confusion_matrix",
    "landmark_summary",
    "mean_class_accuracy",
    "nme",
    "parsing_scores",
    "unit_distance",
]
