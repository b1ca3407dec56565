"""A third pre-training method written outside facerep: BYOL on two views, any backbone (here a ResNet).

It is everything adding a method takes: one module with its config section, its batch spec and its
loss, registered by one decorator (inside facerep, plus one import line in ``facerep/methods/__init__.py``).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facerep.data.transforms import build_pretrain_transform
from facerep.data.views import BatchSpec
from facerep.methods.base import MomentumMethod, build_encoder, register_method
from facerep.models.heads import mlp_head
from facerep.runtime.schedules import Schedule


@dataclass
class ToyConfig:
    momentum: float = 0.9
    dim: int = 16


@register_method("toy_byol", sections={"toy": ToyConfig})
class ToyBYOL(MomentumMethod):
    def __init__(self, encoder, cfg: ToyConfig) -> None:
        super().__init__(Schedule(cfg.momentum, 1.0))
        self.encoder = encoder
        self.projector = mlp_head(encoder.feature_dim, 32, cfg.dim)
        self.predictor = mlp_head(cfg.dim, 32, cfg.dim, last_bn=False)
        self.target_encoder = self.momentum_copy(encoder)
        self.target_projector = self.momentum_copy(self.projector)

    @classmethod
    def from_config(cls, cfg):
        return cls(build_encoder(cfg), cfg.toy)

    def batch_spec(self, data):
        view = build_pretrain_transform(data)
        return BatchSpec((view, view))  # two views, each with its own random flip

    def momentum_pairs(self):
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def forward(self, batch):
        a, b = batch["views"]

        def one_way(x, y):
            p = self.predictor(self.projector(self.encoder.pooled(x)))
            with torch.no_grad():
                z = self.target_projector(self.target_encoder.pooled(y))
            return 2 - 2 * F.cosine_similarity(p, z, dim=-1).mean()

        loss = one_way(a, b) + one_way(b, a)
        return loss, {"byol": loss.detach()}
