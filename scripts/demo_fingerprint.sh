#!/usr/bin/env bash
# A tiny seeded `facerep demo` (every row: random, MAE stage, MAE, MCF, FaRL, BYOL, FRA; frozen read-outs and
# the fine-tuning column) in about 5 minutes on one core, and the SHA-256 of its numbers. A refactor that
# claims "behaviour unchanged" prints the same digest before and after (docs/development.md, "Layout").
# Usage: scripts/demo_fingerprint.sh OUTPUT_DIR   (prints the digest as the last line)
set -euo pipefail
out=${1:?usage: scripts/demo_fingerprint.sh OUTPUT_DIR}
python=${PYTHON:-python}
"$python" -m facerep demo "output_dir=$out" 'seeds=[0]' image_size=32 stage_steps=2 steps=3 batch_size=4 \
  train_length=24 test_length=8 'teachers=[stage]' \
  'pretrain_overrides=[decoder.embed_dim=32,decoder.depth=1,decoder.num_heads=2,mcf.proj_hidden_dim=64,mcf.proj_dim=32,data.num_workers=0,train.progress=log]' \
  'readout.levels=[0,1,2,3]' readout.max_iter=20 'lowlabel.sizes=[8]' lowlabel.steps=2 lowlabel.batch_size=4 \
  'lowlabel.lrs=[1e-4,1e-3]' lowlabel.extend=0 'lowlabel.levels=[0,1]' lowlabel.probe.max_iter=10 >&2
"$python" - "$out/comparison.json" <<'PY'
import hashlib, json, sys
numbers = json.load(open(sys.argv[1]))
numbers = {k: numbers[k] for k in ("per_seed", "lowlabel") if k in numbers}
print(hashlib.sha256(json.dumps(numbers, sort_keys=True).encode()).hexdigest())
PY
