"""``facerep heatmaps``: what the region queries of an FRA run found, as PNG overlays and IoU numbers.

For a ``facerep pretrain`` run of a region method (``method=fra``) it renders held-out synthetic faces,
writes ``images`` overlay rows (face, parsing mask, argmax assignment, one jet heatmap per query) and
scores each query's argmax region against the generator's parsing masks (:mod:`facerep.apps.heatmaps`),
beside the same method at its random initialisation and a fixed grid of as many cells as queries, and
says whether the queries separated at all (heatmap peak, mask-embedding cosine) and whether they split each
face or the set of faces (queries per image). ``split=val`` scores the validation faces (to choose a recipe
on), ``split=test`` (the default) the test faces (to report it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from facerep.apps.heatmaps import (
    face_regions,
    grid_baseline,
    held_out_faces,
    load_run,
    overlay,
    score_regions,
    spread,
)
from facerep.config import ConfigError
from facerep.runtime.atomic import atomic_save, atomic_write_json

COLLAPSED = 0.99  # mean cosine between the queries' mask embeddings above which they count as one


@dataclass
class HeatmapsConfig:
    run: str | None = None  # a facerep pretrain output_dir of method=fra
    images: int = 8  # overlay PNGs written
    eval_images: int = 200  # held-out faces the IoU is pooled over
    # val: the faces to choose a recipe's knobs on; test: the faces to report the chosen recipe on, once
    split: str = "test"
    output_dir: str | None = None  # default: <run>/heatmaps


def run_heatmaps(cfg: HeatmapsConfig) -> dict:
    """Write overlays and ``heatmaps.json`` (trained, random-init and grid scores); returns the scores."""
    if not cfg.run:
        raise ConfigError("facerep heatmaps needs run=DIR (the output_dir of a method=fra pre-training run)")
    if cfg.images < 0 or cfg.eval_images < 1:
        raise ConfigError(f"images must be >= 0 and eval_images >= 1, got {cfg.images} and {cfg.eval_images}")
    method, run_cfg = load_run(cfg.run)
    faces = held_out_faces(max(cfg.images, cfg.eval_images), run_cfg.data.image_size, cfg.split)
    maps, embeddings = face_regions(method, faces, run_cfg)
    out = Path(
        cfg.output_dir or Path(cfg.run) / ("heatmaps" if cfg.split == "test" else f"heatmaps_{cfg.split}")
    )
    for i in range(cfg.images):
        row = overlay(faces[i], maps[i])
        atomic_save(lambda tmp, row=row: row.save(tmp, format="PNG"), out / f"face_{i:03d}.png")
    scored = faces[: cfg.eval_images]
    random_init, _ = load_run(cfg.run, trained=False)
    random_maps, random_embeddings = face_regions(random_init, scored, run_cfg)
    n = cfg.eval_images
    result = {
        "trained": score_regions(maps[:n], scored) | spread(embeddings[:n], maps[:n]),
        "random_init": score_regions(random_maps, scored) | spread(random_embeddings, random_maps),
        "grid": grid_baseline(maps.shape[1], scored),
        "config": asdict(cfg),
    }
    atomic_write_json(out / "heatmaps.json", result)
    print(f"[facerep] region queries of {cfg.run} on {cfg.eval_images} held-out synthetic {cfg.split} faces "
          "(best-matching parsing class, IoU)", flush=True)  # fmt: skip
    print(f"{'query':>6}  {'trained':>22}  {'random init':>22}", flush=True)
    for t, r in zip(result["trained"]["per_query"], result["random_init"]["per_query"], strict=True):
        print(
            f"{t['query']:>6}  {t['class']:>15} {t['iou']:.3f}  {r['class']:>15} {r['iou']:.3f}", flush=True
        )
    queries = maps.shape[1]
    for name in ("trained", "random_init", "grid"):
        scores = result[name]
        line = f"[facerep] {name}: mean best IoU {scores['mean_best_iou']:.3f}"
        line += f", {scores['classes_matched']} classes"
        if "heatmap_peak" in scores:
            line += (f"; heatmap peak {scores['heatmap_peak']:.3f} (uniform {1 / queries:.3f}), "
                     f"mask embeddings' mean cosine {scores['embedding_cosine']:.4f}, "
                     f"{scores['queries_per_image']:.1f} queries per image "
                     f"(the largest owns {scores['largest_query_share']:.2f})")  # fmt: skip
        print(line, flush=True)
    if result["trained"]["embedding_cosine"] > COLLAPSED:
        print("[facerep] warning: the mask embeddings are one vector: the region queries have not separated "
              "(collapsed), the heatmaps are near uniform and the IoU above is that of near-random regions",
              flush=True)  # fmt: skip
    print(f"[facerep] wrote {cfg.images} overlays and heatmaps.json to {out}", flush=True)
    return result
