"""A memory rewrite of exported U2-Net graphs: the widest channel concatenation becomes two convolutions.

U2-Net's top decoder stage starts with ``conv(concat(up(hx2d), hx1))``: at 320x320 that concat is
U2-NetP's largest activation (128 channels, 52 MB per image, 419 MB at batch 8), alive at the same
time as both of its inputs. A convolution over a channel concatenation is the sum of convolutions
over its parts, ``conv(concat(a, b), W) = conv(a, W[:, :Ca]) + conv(b, W[:, Ca:])`` (bias added
once), so the rewrite replaces the pair by one Conv per input and an Add. The numbers are the same
up to float rounding; the graph never holds the concatenation.

On the project's 2-core machine, ONNX Runtime's peak RSS at batch 8 fell from 1.54 GB to 1.15 GB
with the same speed (``bench/results/matting.json``). Only concats at least half the size of the
graph's largest activation are rewritten: splitting the small ones too gave ONNX Runtime's arena a
worse allocation pattern (1.40 GB). Sizes come from one batch-1 run of the graph with every
intermediate exposed, so the pass needs no shape inference (which fails on U2-Net's dynamic
resizes).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

log = logging.getLogger("skuforge.matting.graph")

# At least this share of the largest activation's size, for a concat to be split.
SPLIT_MIN_SHARE = 0.5


def activation_shapes(model: onnx.ModelProto, size_px: int = 320) -> dict[str, tuple[int, ...]]:
    """Shape of every node output for one ``1xCxSxS`` input, from a run with all of them exposed.

    C is the input's declared channel count (3 when it is not fixed). The graph takes one image batch
    (``N x C x H x W``), as an exported U2-Net does; another is a ValueError naming its inputs.
    """
    # An older exporter lists the weights among the inputs too: they are fed from the file.
    weights = {initializer.name for initializer in model.graph.initializer}
    inputs = [value.name for value in model.graph.input if value.name not in weights]
    if len(inputs) != 1:
        raise ValueError(
            f"the graph has {len(inputs)} inputs ({', '.join(inputs) or 'none'}); the activation probe "
            "feeds one image input (N x C x H x W)"
        )
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    # An optional output left out ("", as Dropout's mask) is no tensor: exposed, it failed the session.
    names = [name for node in probe.graph.node if node.op_type != "Constant" for name in node.output if name]
    declared = {output.name for output in probe.graph.output}
    if not names:  # nothing but constants: nothing to measure (and run([]) would return every output)
        return {}
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in declared)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    image = session.get_inputs()[0]
    if len(image.shape) != 4:
        raise ValueError(
            f"input {image.name} is declared {image.shape}; the activation probe feeds one image batch "
            "(N x C x H x W)"
        )
    channels = image.shape[1]
    feed = {
        image.name: np.zeros((1, channels if isinstance(channels, int) else 3, size_px, size_px), np.float32)
    }
    return {name: tuple(value.shape) for name, value in zip(names, session.run(names, feed), strict=True)}


def split_wide_concats(
    model: onnx.ModelProto, *, min_share: float = SPLIT_MIN_SHARE, size_px: int = 320
) -> int:
    """Rewrite, in place, every wide ``Concat(axis=1) -> Conv`` pair as per-input Convs and Adds.

    A pair qualifies when the concat is no graph output, its only consumer is a Conv with constant
    weights, each of its inputs is a node's output (the probe measured its channels), and it is at
    least ``min_share`` of the largest activation. Returns how many pairs were rewritten.
    """
    shapes = activation_shapes(model, size_px)
    if not shapes:
        return 0  # no node but constants: no concat
    largest = max(int(np.prod(shape)) for shape in shapes.values())
    # Nodes by position: names are optional and need not be unique, so a name can stand for many nodes.
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(model.graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    initializers = {init.name: init for init in model.graph.initializer}
    graph_outputs = {output.name for output in model.graph.output}
    name_counts = Counter(node.name for node in model.graph.node)

    replacements: dict[int, list[onnx.NodeProto]] = {}  # conv's index -> its nodes in its place
    dropped: set[int] = set()
    for concat_index, concat in enumerate(model.graph.node):
        users = consumers.get(concat.output[0], [])
        if concat.op_type != "Concat" or len(users) != 1 or concat.output[0] in graph_outputs:
            continue
        conv = model.graph.node[users[0]]
        axis = next((attr.i for attr in concat.attribute if attr.name == "axis"), None)
        if conv.op_type != "Conv" or axis != 1 or conv.input[0] != concat.output[0]:
            continue
        if conv.input[1] not in initializers or any(
            attr.name == "group" and attr.i != 1 for attr in conv.attribute
        ):
            continue
        if any(part not in shapes for part in concat.input):
            continue  # a graph input or a constant: its channels were not measured
        if int(np.prod(shapes[concat.output[0]])) < min_share * largest:
            continue
        # The new nodes and weights are named after the conv; its output (unique) when its name is not.
        prefix = conv.name if conv.name and name_counts[conv.name] == 1 else conv.output[0]
        weights = numpy_helper.to_array(initializers[conv.input[1]])
        channels = [shapes[part][1] for part in concat.input]
        if sum(channels) != weights.shape[1]:
            continue  # not the conv's input channels: leave the pair alone
        bias = conv.input[2:3]
        attributes = {attr.name: helper.get_attribute_value(attr) for attr in conv.attribute}
        nodes, partials, first_channel = [], [], 0
        for index, (part, width) in enumerate(zip(concat.input, channels, strict=True)):
            weight_name = f"{prefix}/split{index}/W"
            model.graph.initializer.append(
                numpy_helper.from_array(weights[:, first_channel : first_channel + width].copy(), weight_name)
            )
            first_channel += width
            partial = f"{prefix}/split{index}"
            inputs = [part, weight_name, *(bias if index == 0 else [])]
            nodes.append(helper.make_node("Conv", inputs, [partial], name=partial, **attributes))
            partials.append(partial)
        total = partials[0]
        for index, partial in enumerate(partials[1:], start=1):
            out = conv.output[0] if index == len(partials) - 1 else f"{prefix}/sum{index}"
            nodes.append(helper.make_node("Add", [total, partial], [out], name=f"{prefix}/sum{index}"))
            total = out
        replacements[users[0]] = nodes
        dropped.add(concat_index)

    if not replacements:
        return 0
    rewritten: list[onnx.NodeProto] = []
    for index, node in enumerate(model.graph.node):
        if index in replacements:
            rewritten.extend(replacements[index])
        elif index not in dropped:
            rewritten.append(node)
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    still_used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in still_used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    log.info("split wide concats", extra={"pairs": len(replacements)})
    return len(replacements)
