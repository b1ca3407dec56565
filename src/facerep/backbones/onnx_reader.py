"""Read the ViT backbone inside an ONNX graph into facerep's (timm) ViT key names.

``torch.onnx`` stores Linear weights transposed under generated names (``onnx::MatMul_1966``), shares equal
tensors through ``Identity`` nodes and decomposes LayerNorm and GELU, so weights are found by the graph's
structure, never by name:

* a *Linear* is a ``MatMul`` of a data tensor by a constant ``[in, out]`` matrix, plus an ``Add`` of a
  constant ``[out]`` bias; a *LayerNorm* is a ``LayerNormalization`` node or its decomposition
  (``ReduceMean``, ``Sub``, ``Pow``, ``Sqrt``, ``Div``, then ``Mul`` weight and ``Add`` bias);
* each attention block is found from its ``Softmax``: query and key are traced back from the
  ``MatMul`` feeding it, value from the ``MatMul`` it feeds (separate q/k/v Linears, as in Hugging Face
  exports, or one fused qkv Linear split in q, k, v order, as in timm), the output projection forward;
  around them the pre-norm, optional layer scale, residual, second norm and MLP (GELU from ``Erf`` or
  ``Gelu``, QuickGELU from ``Sigmoid``) of a pre-norm ViT block, chained block after block;
* the embedding before the first block: a ``Conv`` patch projection of the graph input, a CLS token
  concatenated in front, plus a constant position table (a full ``[1 + G*G, D]`` one, or a CLS row and a
  patch grid that the graph may bicubically ``Resize`` to its input size, as Hugging Face DINOv2 does),
  optionally followed by a LayerNorm (CLIP's pre-norm);
* the backbone ends at the first LayerNorm after the last block (applied to all tokens, or to a
  selected CLS token, as in CLIP): anything after it (pooling, a head) is dropped.

Heads are read from the reshape that splits the query into heads. Graphs that do not fit this shape
(input normalisation inside the graph, register tokens, no final norm, ...) raise a one-line
:class:`CheckpointError` naming the file.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import Tensor

from facerep.backbones.base import short_list
from facerep.backbones.vit import POS_ANTIALIAS
from facerep.runtime.checkpoint import CheckpointError
from facerep.runtime.errors import one_line

_SELECT = ("Gather", "Slice", "Squeeze", "Reshape", "Transpose", "Identity", "Cast")  # token selection ops
# ops position values may flow through: reshaping, slicing, concatenation and one bicubic resize
_POS_OPS = {
    "Reshape", "Transpose", "Resize", "Concat", "Cast", "Identity", "Unsqueeze", "Squeeze", "Expand", "Slice",
}  # fmt: skip
_QUICK_GELU = 1.702
_MAX_WALK = 64


def _epsilon(value: float) -> float:
    """A float32 epsilon as the decimal it was written as (``9.99999997e-07`` -> ``1e-06``)."""
    return float(f"{float(value):.6g}")


@dataclass
class _Linear:
    weight: np.ndarray  # [out, in] (the graph's [in, out] matrix transposed)
    bias: np.ndarray | None
    input: str
    output: str  # after the bias, if any


@dataclass
class _Norm:
    input: str
    output: str
    weight: np.ndarray
    bias: np.ndarray
    eps: float


@dataclass
class _Block:
    input: str
    output: str
    params: dict[str, np.ndarray]  # timm names within the block
    act: str
    eps: tuple[float, float]
    heads: int | None


class _Graph:
    """Constants, producers, data tensors, Linears and LayerNorms of one ONNX graph."""

    def __init__(self, model: onnx.ModelProto, source: str) -> None:
        graph = model.graph
        self.source = source
        self.nodes = list(graph.node)
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.attribute:
                value = helper.get_attribute_value(node.attribute[0])
                self.consts[node.output[0]] = (
                    numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)
                )
            elif node.op_type == "Identity" and node.input[0] in self.consts:
                self.consts[node.output[0]] = self.consts[node.input[0]]
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)
        self.inputs = [i for i in graph.input if i.name not in self.consts]
        if len(self.inputs) != 1:
            raise CheckpointError(
                f"{source}: expected one image input, found {[i.name for i in self.inputs]}"
            )
        self.data = {self.inputs[0].name}  # tensors that depend on the image values (not only its shape)
        for node in self.nodes:
            if node.op_type not in ("Shape", "Size") and any(i in self.data for i in node.input):
                self.data.update(node.output)
        self.linears: dict[str, _Linear] = {}  # by MatMul output and by output
        self.norms_by_input: dict[str, _Norm] = {}
        self.norms_by_output: dict[str, _Norm] = {}
        for node in self.nodes:
            self._add_linear(node)
            norm = self._norm(node)
            if norm is not None:
                self.norms_by_input.setdefault(norm.input, norm)
                self.norms_by_output[norm.output] = norm

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.source}: not a ViT graph facerep can read: {what}")

    def users(self, tensor: str) -> list[onnx.NodeProto]:
        """Nodes using the values of ``tensor`` (not only its shape)."""
        return [n for n in self.consumers[tensor] if n.op_type not in ("Shape", "Size")]

    def data_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i in self.data]

    def const_of(self, node: onnx.NodeProto, tensor: str) -> np.ndarray | None:
        """The constant operand of a binary ``node`` whose other operand is ``tensor``."""
        others = [i for i in node.input if i != tensor]
        return self.consts.get(others[0]) if len(others) == 1 and len(node.input) == 2 else None

    def _add_linear(self, node: onnx.NodeProto) -> None:
        matrix = self.consts.get(node.input[1]) if node.op_type == "MatMul" else None
        if matrix is None or matrix.ndim != 2 or node.input[0] not in self.data:
            return
        linear = _Linear(matrix.T, None, node.input[0], node.output[0])
        users = self.users(node.output[0])
        if len(users) == 1 and users[0].op_type == "Add":
            bias = self.const_of(users[0], node.output[0])
            if bias is not None and bias.shape == (matrix.shape[1],):
                linear.bias, linear.output = bias, users[0].output[0]
        self.linears[node.output[0]] = self.linears[linear.output] = linear

    def _affine(self, tensor: str) -> tuple[np.ndarray, np.ndarray, str] | None:
        """``Mul`` by a weight then ``Add`` of a bias after ``tensor``: (weight, bias, output)."""
        users = self.users(tensor)
        if (
            len(users) != 1
            or users[0].op_type != "Mul"
            or (weight := self.const_of(users[0], tensor)) is None
        ):
            return None
        scaled = users[0].output[0]
        users = self.users(scaled)
        if len(users) != 1 or users[0].op_type != "Add" or (bias := self.const_of(users[0], scaled)) is None:
            return None
        return weight, bias, users[0].output[0]

    def _norm(self, node: onnx.NodeProto) -> _Norm | None:
        """The LayerNorm ``node`` ends (a fused ``LayerNormalization`` or a decomposition's ``Div``)."""
        if node.op_type == "LayerNormalization" and len(node.input) == 3:
            weight, bias = self.consts.get(node.input[1]), self.consts.get(node.input[2])
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if weight is None or bias is None or attrs.get("axis", -1) != -1:
                return None
            return _Norm(node.input[0], node.output[0], weight, bias, _epsilon(attrs.get("epsilon", 1e-5)))
        if node.op_type != "Div":
            return None
        sub, sqrt = self.producer.get(node.input[0]), self.producer.get(node.input[1])
        if sub is None or sqrt is None or sub.op_type != "Sub" or sqrt.op_type != "Sqrt":
            return None
        mean, add = self.producer.get(sub.input[1]), self.producer.get(sqrt.input[0])
        if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0]:
            return None
        eps = (
            None
            if add is None or add.op_type != "Add"
            else next((self.consts[i] for i in add.input if i in self.consts), None)
        )
        affine = self._affine(node.output[0])
        if eps is None or eps.size != 1 or affine is None:
            return None
        weight, bias, output = affine
        return _Norm(sub.input[0], output, weight, bias, _epsilon(eps.item()))

    def trace_back(self, tensor: str) -> tuple[_Linear | None, list[int]]:
        """The Linear whose output reaches ``tensor`` through single-input nodes, and the indices of the
        ``Split`` outputs / ``Gather`` indices passed on the way (a fused qkv's q, k, v)."""
        picks: list[int] = []
        for _ in range(_MAX_WALK):
            if tensor in self.linears:
                return self.linears[tensor], picks
            node = self.producer.get(tensor)
            inputs = self.data_inputs(node) if node is not None else []
            if len(inputs) != 1:
                break
            if node.op_type == "Split":
                picks.append(list(node.output).index(tensor))
            elif node.op_type == "Gather" and (index := self.consts.get(node.input[1])) is not None:
                picks.append(int(index.reshape(-1)[0]))
            tensor = inputs[0]
        return None, picks

    def walk_forward(
        self, tensor: str, done: Callable[[onnx.NodeProto], bool], through: tuple[str, ...] | None = None
    ) -> tuple[onnx.NodeProto | None, list[onnx.NodeProto]]:
        """Breadth-first from ``tensor`` over data users (only ``through`` op types, if given) to the first
        node with ``done(node)``; returns it (or ``None``) and the nodes passed."""
        frontier, passed, seen = [tensor], [], {tensor}
        while frontier and len(passed) < _MAX_WALK:
            for node in self.users(frontier.pop(0)):
                if done(node):
                    return node, passed
                if through is None or node.op_type in through:
                    passed.append(node)
                    fresh = [o for o in node.output if o in self.data and o not in seen]
                    seen.update(fresh)
                    frontier += fresh
        return None, passed

    def is_linear(self, node: onnx.NodeProto) -> bool:
        return node.op_type == "MatMul" and node.output[0] in self.linears

    def data_matmul(self, node: onnx.NodeProto) -> bool:
        return node.op_type == "MatMul" and len(self.data_inputs(node)) == 2


def _vector(value: np.ndarray | None, dim: int) -> bool:
    return value is not None and value.size == dim and value.shape[-1] == dim


def _heads(graph: _Graph, query: _Linear, dim: int, fused: bool) -> int | None:
    """Heads from the ``Reshape`` that splits the query (or fused qkv) output into ``[..., (3,) H, hd]``."""
    node, _ = graph.walk_forward(query.output, lambda n: n.op_type == "Reshape")
    if node is None:
        return None
    shape = graph.consts.get(node.input[1])
    if shape is None and (concat := graph.producer.get(node.input[1])) is not None:
        if concat.op_type != "Concat":
            return None
        parts = [graph.consts.get(i) for i in concat.input]
        shape = np.concatenate([p.reshape(-1) if p is not None else np.array([-1]) for p in parts])
    if shape is None or len(shape) < (3 if fused else 2):
        return None
    heads, head_dim = int(shape[-2]), int(shape[-1])
    if heads == -1 and head_dim > 0:  # view(..., -1, head_dim)
        heads = dim // head_dim
    if head_dim == -1 and heads > 0:
        head_dim = dim // heads
    return heads if heads > 0 and heads * head_dim == dim and (not fused or int(shape[-3]) == 3) else None


def _attention(
    graph: _Graph, softmax: onnx.NodeProto, n: int
) -> tuple[dict[str, np.ndarray], _Linear, str, int | None]:
    """q/k/v and output projection of the attention around ``softmax``: (timm params, output projection,
    the normalised block input, heads)."""
    scores = graph.producer.get(softmax.input[0])
    for _ in range(_MAX_WALK):
        if scores is None or graph.data_matmul(scores) or len(graph.data_inputs(scores)) != 1:
            break
        scores = graph.producer.get(graph.data_inputs(scores)[0])
    mix, _ = graph.walk_forward(softmax.output[0], graph.data_matmul)
    if scores is None or not graph.data_matmul(scores) or mix is None:
        raise graph.fail(f"block {n}: no query-key / attention-value MatMul around its Softmax")
    (q, q_at), (k, k_at), (v, v_at) = (graph.trace_back(t) for t in (*scores.input[:2], mix.input[1]))
    if q is None or k is None or v is None:
        raise graph.fail(f"block {n}: query, key or value does not come from a Linear")
    fused = q is k is v
    if fused and (q_at[:1], k_at[:1], v_at[:1]) != ([0], [1], [2]):
        raise graph.fail(f"block {n}: fused qkv is not split in q, k, v order")
    if not fused and len({id(q), id(k), id(v)}) != 3:
        raise graph.fail(f"block {n}: query, key and value share a Linear in an unknown layout")
    if len({q.input, k.input, v.input}) != 1:
        raise graph.fail(f"block {n}: query, key and value read different inputs")
    dim = q.weight.shape[1]
    proj_node, _ = graph.walk_forward(mix.output[0], graph.is_linear)
    if proj_node is None:
        raise graph.fail(f"block {n}: no output projection after the attention")
    proj = graph.linears[proj_node.output[0]]
    parts = [q] if fused else [q, k, v]
    params = {
        "attn.qkv.weight": np.concatenate([p.weight for p in parts]),
        "attn.qkv.bias": np.concatenate(
            [p.bias if p.bias is not None else np.zeros(len(p.weight)) for p in parts]
        ),
        "attn.proj.weight": proj.weight,
        "attn.proj.bias": proj.bias if proj.bias is not None else np.zeros(dim),
    }
    return params, proj, q.input, _heads(graph, q, dim, fused)


def _residual(graph: _Graph, tensor: str, skip: str, dim: int, n: int) -> tuple[np.ndarray | None, str]:
    """An optional layer scale (``Mul`` by a ``[D]`` constant) after ``tensor``, then the residual ``Add``
    with ``skip``: (gamma or ``None``, the sum)."""
    gamma = None
    users = graph.users(tensor)
    if (
        len(users) == 1
        and users[0].op_type == "Mul"
        and _vector(value := graph.const_of(users[0], tensor), dim)
    ):
        gamma, tensor = value.reshape(-1), users[0].output[0]
        users = graph.users(tensor)
    if len(users) != 1 or users[0].op_type != "Add" or set(users[0].input) != {tensor, skip}:
        raise graph.fail(f"block {n}: no residual connection around its attention or MLP")
    return gamma, users[0].output[0]


def _activation(graph: _Graph, passed: list[onnx.NodeProto], n: int) -> str:
    ops = {node.op_type for node in passed}
    exact = [helper.get_attribute_value(a) for n in passed if n.op_type == "Gelu" for a in n.attribute]
    if "Erf" in ops or ("Gelu" in ops and b"tanh" not in exact):
        return "gelu"
    factors = [graph.consts.get(i) for node in passed if node.op_type == "Mul" for i in node.input]
    if "Sigmoid" in ops and any(
        f is not None and f.size == 1 and abs(f.item() - _QUICK_GELU) < 1e-3 for f in factors
    ):
        return "quick_gelu"
    raise graph.fail(f"block {n}: MLP activation of ops {sorted(ops)} is neither GELU nor QuickGELU")


def _block(graph: _Graph, softmax: onnx.NodeProto, n: int) -> _Block:
    """One pre-norm block: norm1, attention, [ls1], residual, norm2, fc1, act, fc2, [ls2], residual."""
    params, proj, normed, heads = _attention(graph, softmax, n)
    norm1 = graph.norms_by_output.get(normed)
    if norm1 is None:
        raise graph.fail(f"block {n}: its attention input is not a LayerNorm (only pre-norm ViTs are read)")
    dim = len(norm1.weight)
    gamma1, hidden = _residual(graph, proj.output, norm1.input, dim, n)
    norm2 = graph.norms_by_input.get(hidden)
    fc1_node = next((u for u in graph.users(norm2.output) if graph.is_linear(u)), None) if norm2 else None
    if norm2 is None or fc1_node is None:
        raise graph.fail(f"block {n}: no LayerNorm and Linear after the attention residual")
    fc1 = graph.linears[fc1_node.output[0]]
    fc2_node, passed = graph.walk_forward(fc1.output, graph.is_linear)
    if fc2_node is None:
        raise graph.fail(f"block {n}: no second MLP Linear")
    fc2 = graph.linears[fc2_node.output[0]]
    gamma2, output = _residual(graph, fc2.output, hidden, dim, n)
    if (gamma1 is None) != (gamma2 is None):
        raise graph.fail(f"block {n}: layer scale on only one of its two branches")
    params |= {
        "norm1.weight": norm1.weight, "norm1.bias": norm1.bias, "norm2.weight": norm2.weight,
        "norm2.bias": norm2.bias, "mlp.fc1.weight": fc1.weight, "mlp.fc2.weight": fc2.weight,
        "mlp.fc1.bias": fc1.bias if fc1.bias is not None else np.zeros(len(fc1.weight)),
        "mlp.fc2.bias": fc2.bias if fc2.bias is not None else np.zeros(dim),
    }  # fmt: skip
    if gamma1 is not None:
        params |= {"ls1.gamma": gamma1, "ls2.gamma": gamma2}
    act = _activation(graph, passed, n)
    return _Block(norm1.input, output, params, act, (norm1.eps, norm2.eps), heads)


def _cone(graph: _Graph, tensor: str) -> list[onnx.NodeProto]:
    """The nodes computing ``tensor`` (its ancestors, not looking behind ``Shape``), in graph order."""
    wanted, stack = set(), [tensor]
    while stack:
        node = graph.producer.get(stack.pop())
        if node is not None and id(node) not in wanted:
            wanted.add(id(node))
            stack += [] if node.op_type in ("Shape", "Size") else list(node.input)
    return [node for node in graph.nodes if id(node) in wanted]


def _float_consts(graph: _Graph, nodes: list[onnx.NodeProto], tensor: str) -> dict[str, np.ndarray]:
    """Non-scalar float constants read by ``nodes`` (or ``tensor`` itself), by name."""
    names = dict.fromkeys([tensor, *(i for node in nodes for i in node.input)])
    found = {name: graph.consts.get(name) for name in names}
    return {k: v for k, v in found.items() if v is not None and v.dtype.kind == "f" and v.size > 1}


def _row_lookup(graph: _Graph, node: onnx.NodeProto) -> bool:
    """A ``Gather`` of rows ``0..n-1`` on axis 0 (CLIP's ``position_embedding(position_ids)``): a no-op."""
    index = graph.consts.get(node.input[1]) if node.op_type == "Gather" else None
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
    return index is not None and axis == 0 and np.array_equal(index.reshape(-1), np.arange(index.size))


def _check_resize(graph: _Graph, node: onnx.NodeProto) -> None:
    """Accept only the bicubic resize of torch / transformers (a = -0.75, half-pixel, no antialias)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    mode = attrs.get("mode", b"nearest").decode()
    transform = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
    if (
        mode != "cubic"
        or abs(attrs.get("cubic_coeff_a", -0.75) + 0.75) > 1e-6
        or transform not in ("half_pixel", "pytorch_half_pixel")
        or attrs.get("antialias", 0)
        or attrs.get("exclude_outside", 0)
    ):
        raise graph.fail(f"position grid resized with {mode} / {transform}; expected bicubic, half-pixel")


def _position(graph: _Graph, tensor: str, dim: int, grid: int | None) -> tuple[np.ndarray, bool]:
    """The stored position table ``[1 + G*G, D]`` behind ``tensor`` and whether the graph resizes it."""
    nodes = _cone(graph, tensor)
    tables = {k: v for k, v in _float_consts(graph, nodes, tensor).items() if v.shape[-1] == dim}
    moving, path = set(tables), []  # the nodes the table values flow through
    for node in nodes:
        if node.op_type not in ("Shape", "Size") and any(i in moving for i in node.input):
            path.append(node)
            moving.update(node.output)
    unknown = sorted({node.op_type for node in path if not _row_lookup(graph, node)} - _POS_OPS)
    resizes = [node for node in path if node.op_type == "Resize"]
    if unknown or len(resizes) > 1:
        raise graph.fail(f"position embedding computed with {unknown or 'several Resize nodes'}")
    for node in resizes:
        _check_resize(graph, node)
    parts = sorted((v.reshape(-1, dim) for v in tables.values()), key=len)  # a CLS row first
    rows = [len(v) for v in parts]
    if rows and rows[-1] > 1 and rows[:-1] in ([], [1]):
        table = np.concatenate(parts)
    else:
        raise graph.fail(f"position embedding from tables of {rows} rows; expected a CLS row and a grid")
    stored = round((len(table) - 1) ** 0.5)
    if stored * stored != len(table) - 1:
        raise graph.fail(f"position table of {len(table)} rows is not a CLS row plus a square grid")
    if not resizes and grid is not None and stored != grid:
        raise graph.fail(f"position grid {stored}x{stored} does not fit the {grid}x{grid} patch grid")
    return table, bool(resizes)


def _patch_embed(graph: _Graph, tensor: str, dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The patch projection ``Conv`` behind ``tensor``: weight ``[D, 3, p, p]`` and bias (or ``None``)."""
    node = graph.producer.get(tensor)
    while node is not None and node.op_type != "Conv" and len(graph.data_inputs(node)) == 1:
        node = graph.producer.get(graph.data_inputs(node)[0])
    if node is None or node.op_type != "Conv":
        raise graph.fail("no patch-embedding Conv before the first block")
    weight = graph.consts.get(node.input[1])
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    size = None if weight is None else weight.shape[-1]
    if (
        weight is None
        or weight.shape[0] != dim
        or list(attrs.get("strides", [])) != [size, size]
        or any(attrs.get("pads", []))
        or attrs.get("group", 1) != 1
    ):
        raise graph.fail("the first Conv is not a patch projection (stride = kernel, no padding)")
    source = node.input[0]
    while source != graph.inputs[0].name:
        upstream = graph.producer.get(source)
        if upstream is None or upstream.op_type not in ("Cast", "Identity"):
            raise graph.fail("the graph transforms its input before the patch projection (normalisation?)")
        source = upstream.input[0]
    bias = graph.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return weight, bias


def _input_grid(graph: _Graph, patch: int) -> int | None:
    """The patch grid of the graph's declared input size (``None`` when it is dynamic)."""
    dims = graph.inputs[0].type.tensor_type.shape.dim
    sizes = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(sizes) != 4 or sizes[1] != 3:
        raise graph.fail(f"the input is not an image batch [N, 3, H, W] (declared {sizes})")
    height, width = sizes[2:]
    if height is None or width is None:
        return None
    if height != width or height % patch:
        raise graph.fail(f"input {height}x{width} is not square or not a multiple of patch size {patch}")
    return height // patch


def _embedding(graph: _Graph, first: str, dim: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """cls token, position table, patch projection and pre-norm before the block input ``first``."""
    params: dict[str, np.ndarray] = {}
    pre = graph.norms_by_output.get(first)
    if pre is not None:
        params |= {"norm_pre.weight": pre.weight, "norm_pre.bias": pre.bias}
        first = pre.input
    add = graph.producer.get(first)
    if add is None or add.op_type != "Add" or len(graph.data_inputs(add)) != 1:
        raise graph.fail("the first block's input is not tokens plus a position embedding")
    tokens = graph.data_inputs(add)[0]
    concat = graph.producer.get(tokens)
    if (
        concat is None
        or concat.op_type != "Concat"
        or len(concat.input) != 2
        or concat.input[0] in graph.data
    ):
        raise graph.fail("tokens are not [CLS, patches] (register or distillation tokens are not supported)")
    consts = _float_consts(graph, _cone(graph, concat.input[0]), concat.input[0])
    cls = [t for t in consts.values() if t.size == dim]
    if len(cls) != 1:
        raise graph.fail("no single [D] class token before the patch tokens")
    weight, bias = _patch_embed(graph, concat.input[1], dim)
    patch = weight.shape[-1]
    grid = _input_grid(graph, patch)
    table, resized = _position(graph, next(i for i in add.input if i != tokens), dim, grid)
    params |= {
        "cls_token": cls[0].reshape(1, 1, dim),
        "pos_embed": table[None],
        "patch_embed.proj.weight": weight,
    }
    if bias is not None:
        params["patch_embed.proj.bias"] = bias
    record = {"img_size": grid * patch} if grid is not None and resized else {}
    return params, record


def _after(graph: _Graph, end: str) -> list[onnx.NodeProto]:
    """The nodes using values computed from ``end`` (shape reads aside), in graph order."""
    reached, after = {end}, []
    for node in graph.nodes:
        if node.op_type not in ("Shape", "Size") and any(i in reached for i in node.input):
            after.append(node)
            reached.update(node.output)
    return after


def _dropped(graph: _Graph, after: list[onnx.NodeProto]) -> str | None:
    """A note on the nodes after the backbone when they hold weights (a head), else ``None``."""
    names = (i for node in after for i in node.input if i in graph.consts and graph.consts[i].size > 1)
    weights = list(dict.fromkeys(names))
    if not weights:
        return None
    ops = ", ".join(f"{op} x{count}" for op, count in Counter(n.op_type for n in after).most_common(6))
    return (
        f"kept the ViT backbone up to its final norm; dropped the {len(after)} graph nodes after it "
        f"({ops}, ...) and their {len(weights)} weight tensors {short_list(weights, 4)}"
    )


def _blocks(graph: _Graph) -> tuple[list[_Block], tuple[onnx.NodeProto, CheckpointError] | None]:
    """The chain of blocks from the first ``Softmax`` on, and the first ``Softmax`` that does not continue
    it (with the error saying why), if any: it must lie beyond the backbone, in a head."""
    blocks: list[_Block] = []
    for node in graph.nodes:
        if node.op_type != "Softmax":
            continue
        try:
            block = _block(graph, node, len(blocks))
        except CheckpointError as err:
            return blocks, (node, err)
        if blocks and block.input != blocks[-1].output:
            return blocks, (
                node,
                graph.fail(f"block {len(blocks)} does not continue block {len(blocks) - 1}"),
            )
        blocks.append(block)
    return blocks, None


def read_onnx_vit(path: Path, source: str) -> tuple[dict[str, Tensor], dict[str, Any], str | None]:
    """The ViT in the ONNX file ``path``: (state dict in timm names, arch record, a note on dropped parts).

    The record holds what weights cannot tell (heads, activation, LayerNorm epsilon) and, when the graph
    resizes its position grid to its input size, that size (``img_size``) with :data:`POS_ANTIALIAS` off.
    """
    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise CheckpointError(f"{source}: not a readable ONNX file: {one_line(err, 200)}") from err
    graph = _Graph(model, source)
    blocks, stop = _blocks(graph)
    if not blocks:
        raise stop[1] if stop else graph.fail("no attention block (Softmax) found")
    _, before = graph.walk_forward(blocks[-1].output, lambda node: False, _SELECT)
    final = graph.norms_by_input.get(blocks[-1].output) or next(
        (graph.norms_by_input[o] for node in before for o in node.output if o in graph.norms_by_input), None
    )
    if final is None:
        raise stop[1] if stop else graph.fail("no final LayerNorm after the last block")
    after = _after(graph, final.output)
    if stop and all(node is not stop[0] for node in after):
        raise stop[1]  # a block that failed to parse inside the backbone
    dim = len(final.weight)
    state, record = _embedding(graph, blocks[0].input, dim)
    state |= {"norm.weight": final.weight, "norm.bias": final.bias}
    for n, block in enumerate(blocks):
        state |= {f"blocks.{n}.{k}": v for k, v in block.params.items()}
    acts = {block.act for block in blocks}
    eps = {e for block in blocks for e in block.eps} | {final.eps}
    heads = {block.heads for block in blocks}
    if len(acts) != 1 or len(eps) != 1:
        raise graph.fail(f"blocks differ in activation {sorted(acts)} or LayerNorm epsilon {sorted(eps)}")
    record |= {"act": acts.pop(), "norm_eps": eps.pop(), POS_ANTIALIAS: False}
    if len(heads) == 1 and None not in heads:
        record["num_heads"] = heads.pop()
    tensors = {k: torch.tensor(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
    return tensors, record, _dropped(graph, after)
