"""Run a facerep command with FaRL's image-tower fields replaced, for the tower ablation in
docs/methods/farl.md.

``method=farl`` builds its tower with :data:`facerep.backbones.vit.CLIP_TOWER` (FaRL's layout); this script
swaps those fields for the ones given as JSON, then runs the command as ``facerep`` would:

    python scripts/farl_tower_ablation.py '{"pre_norm": true, "act": "quick_gelu", "norm_eps": 1e-05,
        "pos_embed": "sincos"}' pretrain -c configs/farl_cpu_tiny.yaml train.lr=2e-3 \
        output_dir=runs/farl_sincos
    python scripts/farl_tower_ablation.py '{}' zeroshot backbone=runs/farl_sincos \
        dataset=synthetic_attributes

(``{}``: facerep's MAE-style tower: no ``ln_pre``, GELU, epsilon 1e-6, fixed sin-cos positions, MAE's init.)
"""

from __future__ import annotations

import json
import sys

import facerep.methods.farl as farl
from facerep.commands.cli import main

if __name__ == "__main__":
    farl.CLIP_TOWER = json.loads(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
