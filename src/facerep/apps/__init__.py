"""What people run on trained networks: prediction on photos and videos, export, zero-shot, data
preparation, the benchmark's frozen read-outs and low-label fine-tuning, region heatmaps, facer's models."""
