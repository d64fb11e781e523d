#!/usr/bin/env python3
"""Builds Sluice's demo models reproducibly (fixed seeds, pinned onnx/numpy).

The small models are committed to git; `wide` (about 55 MB of weights) is generated here during set-up and kept out of git.
Run with --force to rebuild everything, --check to verify that the committed files match what this script makes.
"""
import argparse
import hashlib
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 17
IR_VERSION = 8


def save(model, name, version=1):
    onnx.checker.check_model(model)
    path = os.path.join(HERE, name, str(version), "model.onnx")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = model.SerializeToString()
    return path, data


def make_model(graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sluice-make-models")
    model.ir_version = IR_VERSION
    return model


def dense_stack(name, rng, widths, in_name, out_name, relu_last=False):
    """A chain of Gemm(+Relu) layers: widths[0] -> widths[1] -> ... ; returns (nodes, initializers)."""
    nodes, inits = [], []
    current = in_name
    layers = len(widths) - 1
    for i in range(layers):
        fan_in, fan_out = widths[i], widths[i + 1]
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"{name}_w{i}"), numpy_helper.from_array(b, f"{name}_b{i}")]
        last = i == layers - 1
        gemm_out = out_name if (last and not relu_last) else f"{name}_h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"{name}_w{i}", f"{name}_b{i}"], [gemm_out]))
        current = gemm_out
        if not last or relu_last:
            relu_out = out_name if last else f"{name}_r{i}"
            nodes.append(helper.make_node("Relu", [gemm_out], [relu_out]))
            current = relu_out
    return nodes, inits


def fraud_mlp(seed):
    """Tabular scoring: input FP32 [batch, 64] -> logits FP32 [batch, 2]."""
    rng = np.random.default_rng(seed)
    nodes, inits = dense_stack("fc", rng, [64, 256, 256, 2], "input", "logits")
    graph = helper.make_graph(
        nodes, "fraud_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        inits,
    )
    return make_model(graph)


def wide():
    """Compute-heavy: input FP32 [batch, 512] -> 4 Gemm+Relu layers 2048 wide -> logits FP32 [batch, 16]."""
    rng = np.random.default_rng(7)
    nodes, inits = dense_stack("wide", rng, [512, 2048, 2048, 2048, 2048], "input", "hidden", relu_last=True)
    w = (rng.standard_normal((2048, 16)) / np.sqrt(2048)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "head_w"))
    nodes.append(helper.make_node("MatMul", ["hidden", "head_w"], ["logits"]))
    graph = helper.make_graph(
        nodes, "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 512])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 16])],
        inits,
    )
    return make_model(graph)


def recommender():
    """Two inputs with an integer dtype: item_ids INT64 [batch, 20] + user_features FP32 [batch, 32] -> scores FP32 [batch, 100].

    Item ids are reduced modulo the embedding table size (Mod with a positive divisor is never negative), so any id is valid.
    """
    rng = np.random.default_rng(11)
    items, dim = 1000, 16
    table = (rng.standard_normal((items, dim)) * 0.1).astype(np.float32)
    w = (rng.standard_normal((dim + 32, 100)) / np.sqrt(dim + 32)).astype(np.float32)
    b = np.zeros(100, dtype=np.float32)
    inits = [
        numpy_helper.from_array(table, "item_table"),
        numpy_helper.from_array(np.array(items, dtype=np.int64), "item_count"),
        numpy_helper.from_array(w, "score_w"),
        numpy_helper.from_array(b, "score_b"),
    ]
    nodes = [
        helper.make_node("Mod", ["item_ids", "item_count"], ["item_idx"], fmod=0),
        helper.make_node("Gather", ["item_table", "item_idx"], ["item_emb"], axis=0),
        helper.make_node("ReduceMean", ["item_emb"], ["item_mean"], axes=[1], keepdims=0),
        helper.make_node("Concat", ["item_mean", "user_features"], ["joined"], axis=1),
        helper.make_node("Gemm", ["joined", "score_w", "score_b"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes, "recommender",
        [
            helper.make_tensor_value_info("item_ids", TensorProto.INT64, ["batch", 20]),
            helper.make_tensor_value_info("user_features", TensorProto.FLOAT, ["batch", 32]),
        ],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 100])],
        inits,
    )
    return make_model(graph)


def identity():
    """Passthrough, to measure the gateway's own overhead: input FP32 [batch, 256] -> output."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])], "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 256])],
    )
    return make_model(graph)


def fixed_affine():
    """A fixed shape with no batch dimension (served without batching): x FP32 [8] -> y FP32 [4] = x @ W + b."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    b = np.arange(4, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])], "fixed_affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return make_model(graph)


ALL_TYPES = [
    ("bool", TensorProto.BOOL), ("int8", TensorProto.INT8), ("int16", TensorProto.INT16),
    ("int32", TensorProto.INT32), ("int64", TensorProto.INT64), ("uint8", TensorProto.UINT8),
    ("uint16", TensorProto.UINT16), ("uint32", TensorProto.UINT32), ("uint64", TensorProto.UINT64),
    ("fp16", TensorProto.FLOAT16), ("fp32", TensorProto.FLOAT), ("fp64", TensorProto.DOUBLE),
    ("bytes", TensorProto.STRING),
]


def all_types():
    """One passthrough per V2 datatype (in_<t> [batch, n] -> out_<t>), to prove every dtype end to end."""
    nodes, inputs, outputs = [], [], []
    for suffix, elem in ALL_TYPES:
        nodes.append(helper.make_node("Identity", [f"in_{suffix}"], [f"out_{suffix}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{suffix}", elem, ["batch", "n"]))
        outputs.append(helper.make_tensor_value_info(f"out_{suffix}", elem, ["batch", "n"]))
    return make_model(helper.make_graph(nodes, "all_types", inputs, outputs))


def build_all():
    """Every (path, bytes) this script owns, in a fixed order."""
    return [
        save(fraud_mlp(1), "fraud_mlp", 1),
        save(fraud_mlp(2), "fraud_mlp", 2),
        save(wide(), "wide", 1),
        save(recommender(), "recommender", 1),
        save(identity(), "identity", 1),
        save(fixed_affine(), "fixed_affine", 1),
        save(all_types(), "all_types", 1),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--force", action="store_true", help="rewrite every model")
    parser.add_argument("--check", action="store_true", help="fail if a model on disk differs from what this script makes")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    # `wide` is the slow one: skip building anything when every file is already there (the common case).
    expected = ["fraud_mlp/1", "fraud_mlp/2", "wide/1", "recommender/1", "identity/1", "fixed_affine/1", "all_types/1"]
    if not (args.force or args.check) and all(os.path.exists(os.path.join(HERE, p, "model.onnx")) for p in expected):
        return 0
    bad = 0
    for path, data in build_all():
        rel = os.path.relpath(path, HERE)
        if args.check:
            with open(path, "rb") as f:
                same = f.read() == data
            if not same:
                print(f"make_models: {rel} differs from what the script makes", file=sys.stderr)
                bad += 1
            continue
        if os.path.exists(path) and not args.force:
            continue
        with open(path + ".part", "wb") as f:
            f.write(data)
        os.replace(path + ".part", path)
        if not args.quiet:
            print(f"wrote {rel} ({len(data) / 1e6:.2f} MB, sha256 {hashlib.sha256(data).hexdigest()[:16]})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
