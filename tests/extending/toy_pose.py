"""A new downstream task written outside facerep: head-yaw regression from the pooled feature.

Adding a task takes one module (its model, transform, loss, evaluation, and for ``facerep predict`` and
``export`` what its output is and how to read, caption and draw it) registered by one decorator; its
synthetic dataset here is one more registry line.
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from facerep.data.downstream import DATASETS
from facerep.data.downstream.synthetic import SyntheticAttributes
from facerep.tasks.base import Layout, Output, Task, register_task

YAW_SCALE = 40.0  # the head regresses yaw / YAW_SCALE (degrees)


class SyntheticYaw(SyntheticAttributes):
    dataset_name = "synthetic_yaw"
    task = "head_pose"
    attribute_names = None  # one output, the yaw in degrees: nothing to name

    def _load(self, index):
        face = self.render(index)
        return {"image": face.image, "yaw": np.float32(face.params["yaw"])}


DATASETS.add(SyntheticYaw.dataset_name, SyntheticYaw)


@register_task
class HeadPose(Task):
    name = "head_pose"
    primary = "yaw_mae"
    higher_is_better = False

    def build_model(self, backbone, dataset):
        return _Regressor(backbone)

    def transform(self, train):
        return _to_tensor  # no augmentation: a flip would negate the yaw

    def originals(self, sample):
        return {"yaw": float(sample["yaw"])}

    def loss(self, model, batch):
        loss = F.smooth_l1_loss(model(batch["image"]).float(), batch["yaw"].float() / YAW_SCALE)
        return loss, {"smooth_l1": loss.detach()}

    @torch.no_grad()
    def predict(self, model, batch):
        return {"yaw": self.export_forward(model(batch["image"]).float()).cpu()}

    @torch.no_grad()
    def evaluate(self, model, loader, dataset, device):
        errors = []
        for batch in loader:
            batch["image"] = batch["image"].to(device)
            errors.append((self.predict(model, batch)["yaw"] - batch["yaw"].float()).abs())
        return {"full": {"yaw_mae": float(torch.cat(errors).mean())}}

    def draw(self, sample, prediction, dataset):
        """``facerep evaluate overlays=N``: the face with the predicted and the true yaw."""
        image = Image.fromarray(sample["image"]).convert("RGB")
        text = f"yaw {float(prediction['yaw'][0]):+.1f} (gt {float(sample['yaw']):+.1f})"
        ImageDraw.Draw(image).text((2, 2), text, fill=(255, 255, 0))
        return image

    # facerep predict and export: one yaw in degrees per face; the rest (a canvas crop) is the default
    def layout_complete(self, layout: Layout) -> bool:
        return True  # one yaw, whatever the dataset names

    def export_output(self, layout: Layout) -> Output:
        return Output("yaw", ("N",))

    def export_forward(self, out: torch.Tensor) -> torch.Tensor:
        return out * YAW_SCALE

    def read_face(self, output, face, layout, hw):
        return {"yaw": round(float(output), 2)}

    def null_face(self, face, layout):
        return {"yaw": None}

    def caption(self, face):
        return f"yaw {face['yaw']:+.1f}"


def _to_tensor(sample):
    image = torch.from_numpy(sample["image"]).permute(2, 0, 1).float() / 255
    return {"image": (image - 0.5) / 0.25}


class _Regressor(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, 1)

    def forward(self, images):
        return self.head(self.backbone.pooled(images))[:, 0]
