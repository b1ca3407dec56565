"""A control for FRA's regions: its neck (mask queries, pixel projections, heads) trained on a backbone
that stays at its random initialisation.

``facerep heatmaps`` shows that after FRA's CPU recipe the regions lose to a fixed grid, and
``scripts/region_references.py --run`` that a random network's per-pixel features cluster above the grid
where the trained ones cluster below it (docs/methods/fra.md, "Why the CPU regions lose to the grid"). This
run asks the other half: given features that keep each position's content (the random backbone's), does
FRA's objective train a neck whose heatmaps beat the grid? It is ``facerep pretrain`` with the online
encoder's weights frozen (``requires_grad`` off: the optimizer skips them; BatchNorm still normalises by the
batch; the momentum encoder, an average of a constant, stays equal to it).

Run: ``python scripts/fra_frozen_backbone.py -c configs/fra_cpu_tiny.yaml model.output_stride=16
output_dir=runs/fra_exp/os16_frozen`` (any ``facerep pretrain`` arguments), then ``facerep heatmaps
run=runs/fra_exp/os16_frozen split=val``.
"""

from __future__ import annotations

import sys

from facerep.commands.cli import main
from facerep.methods import PretrainMethod
from facerep.train import pretrain as pretrain_module


def frozen_encoder(build):
    """``build`` (:func:`facerep.methods.build_method`) whose method's online encoder does not train."""

    def build_frozen(cfg) -> PretrainMethod:
        method = build(cfg)
        method.encoder.requires_grad_(False)
        return method

    return build_frozen


if __name__ == "__main__":
    pretrain_module.build_method = frozen_encoder(pretrain_module.build_method)
    sys.exit(main(["pretrain", *sys.argv[1:]]))
