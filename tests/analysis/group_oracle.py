"""A numerical oracle for channel groups, run in onnxruntime on the model itself - not graphc's rules.

A group claims that its channel ``j`` sits at ``positions[slot][j]`` of every slot (tensor, axis)
it lists, and that those positions must go together. Two properties test the claim with data:

- **closed** (the analysis did not split a group it should have kept whole): zero channel ``j``
  in every producer of the group (output weights and biases, as pruning does); then every
  activation slot of the group holds at ``positions[slot][j]`` the same values for two different
  inputs. Had a producer feeding the same positions (the other operand of a residual Add, a
  depthwise Conv's input...) been left out, its data would still reach them.
- **minimal** (the analysis did not merge groups it should have kept apart): change one weight row
  of one producer that belongs to channel ``j`` (an *atom*) to random values; in every activation
  slot of the group, only positions of channel ``j`` may change. Atoms are linked when they change
  a common position; all atoms of channel ``j``, over all producers, must be linked into one.
  Merged groups fail one or the other: a merge across a weighted layer mixes channels (all
  positions of the layer's output change), a merge of independent branches leaves their atoms
  unlinked.

One onnxruntime session per model (graph optimizations off, one thread: an untouched position
comes out bit-identical) in which the producers' weights are graph inputs, so each masking or
perturbation is a feed, and every activation slot of the checked groups is a graph output.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

#: a position has changed when it moved by more than this fraction of the tensor's largest value
CHANGED = 1e-6
#: two inputs give "the same values" within this fraction of the tensor's largest value
SAME = 1e-5


@dataclass
class Slots:
    """What the oracle needs of one group: channel count, producer weight slots, positions."""

    gid: int
    size: int
    producers: list[tuple[str, int]]                # (weight initializer, axis of its output rows)
    biases: list[tuple[str, int]]
    positions: dict[tuple[str, int], np.ndarray]   # slot -> (size, k) positions


@dataclass
class Verdict:
    gid: int
    problems: list[str] = field(default_factory=list)


def slots_of(group) -> Slots:
    """The claim of a graphc ChannelGroup, as plain names and arrays."""
    return Slots(group.id, group.size, sorted({m.slot for m in group.producers}),
                 sorted({m.slot for m in group.role("bias")}),
                 {k: np.asarray(v).reshape(group.size, -1) for k, v in group.positions.items()})


class Oracle:
    """Runs the model with chosen weights as inputs and chosen tensors as outputs."""

    def __init__(self, proto: onnx.ModelProto, groups: list[Slots], feeds: list[dict]):
        proto = _with_constant_nodes_as_initializers(proto)
        inits = {t.name: t for t in proto.graph.initializer}
        self.weights = {name: numpy_helper.to_array(inits[name]) for g in groups
                        for name, _ in g.producers + g.biases}
        cut_proto, self.cuts = _cut_at_mixing_layers(proto, set(inits))
        whole = _session(proto, [], sorted(set(self.cuts.values())))
        every = sorted({o for node in cut_proto.graph.node for o in node.output if o})
        self.session = _session(cut_proto, sorted(self.weights), every)
        self.names = [o.name for o in self.session.get_outputs()]
        self.feeds = []
        for feed in feeds:             # each input's cut tensors, from the whole model
            values = dict(zip([o.name for o in whole.get_outputs()], whole.run(None, feed)))
            self.feeds.append({**feed, **{cut: values[source] for cut, source in self.cuts.items()}})
        self.reference = [self.run(feed) for feed in self.feeds]

    def run(self, feed: dict, weights: dict | None = None) -> dict[str, np.ndarray]:
        values = dict(self.weights)
        values.update(weights or {})
        outs = self.session.run(None, {**feed, **values})
        return dict(zip(self.names, outs))

    def check(self, group: Slots, channel: int) -> Verdict:
        verdict = Verdict(group.gid)
        slots = {k: v for k, v in group.positions.items() if k[0] in self.names}
        self._closed(group, channel, slots, verdict)
        self._perturbed(group, channel, slots, verdict)
        return verdict

    def _closed(self, group: Slots, j: int, slots, verdict: Verdict) -> None:
        masked = {}
        for name, axis in group.producers + group.biases:
            w = np.array(masked.get(name, self.weights[name]), copy=True)
            index = [slice(None)] * w.ndim
            index[axis] = group.positions[(name, axis)][j]
            w[tuple(index)] = 0
            masked[name] = w
        a, b = (self.run(feed, masked) for feed in self.feeds[:2])
        for (name, axis), pos in slots.items():
            x, y = np.take(a[name], pos[j], axis=axis), np.take(b[name], pos[j], axis=axis)
            scale = max(float(np.abs(a[name]).max()), 1e-30)
            if x.shape != y.shape or float(np.abs(x - y).max(initial=0)) > SAME * scale:
                verdict.problems.append(f"not closed: with channel {j} zeroed in every producer, "
                                        f"'{name}' axis {axis} at {pos[j].tolist()} still depends on the input")

    def _perturbed(self, group: Slots, j: int, slots, verdict: Verdict) -> None:
        """Each atom of channel j alone: it may reach only the group's slots, there only channel j's
        positions, and the atoms must be linked into one through the positions they reach."""
        rng = np.random.default_rng(group.gid * 1000 + j)
        reference = self.reference[0]
        listed = {name for name, _ in group.positions}
        atoms: list[set] = []
        for name, axis in group.producers:
            for row in group.positions[(name, axis)][j]:
                out = self.run(self.feeds[0], {name: _randomized_row(self.weights[name], axis, int(row), rng)})
                outside = [t for t in self.names if t not in listed and _moved(reference[t], out[t])]
                if outside:
                    verdict.problems.append(f"not closed: row {row} of '{name}' (channel {j}) reaches "
                                            f"{outside[:3]}, which the group does not list")
                touched = set()
                for (t, t_axis), pos in slots.items():
                    moved = _moved_positions(reference[t], out[t], t_axis)
                    stray = sorted(set(moved) - set(pos[j].tolist()))
                    if stray:
                        verdict.problems.append(
                            f"wrong positions: row {row} of '{name}' (channel {j}) changes '{t}' axis {t_axis} "
                            f"at {stray[:5]}, outside channel {j}'s {pos[j].tolist()[:5]}")
                    touched |= {(t, t_axis, p) for p in moved}
                atoms.append(touched)
        parts = _components(atoms)
        if len(parts) > 1:
            verdict.problems.append(f"not minimal: channel {j}'s {len(atoms)} producer rows fall into "
                                    f"{len(parts)} sets that reach no common position")


def _randomized_row(w: np.ndarray, axis: int, row: int, rng) -> np.ndarray:
    out = np.array(w, copy=True)
    index = [slice(None)] * w.ndim
    index[axis] = row
    out[tuple(index)] = rng.standard_normal(out[tuple(index)].shape) * 3 * (float(np.abs(w).std()) or 1.0)
    return out


def _moved(before: np.ndarray, after: np.ndarray) -> bool:
    if before.shape != after.shape:
        return True
    if before.dtype.kind not in "fc":
        return not np.array_equal(before, after)
    scale = max(float(np.abs(before).max(initial=0)), 1e-30)
    return bool(np.any(np.abs(after.astype(np.float64) - before) > CHANGED * scale))


def _moved_positions(before: np.ndarray, after: np.ndarray, axis: int) -> list[int]:
    scale = max(float(np.abs(before).max()), 1e-30)
    diff = np.abs(after.astype(np.float64) - before) > CHANGED * scale
    other = tuple(a for a in range(diff.ndim) if a != axis)
    return np.flatnonzero(diff.any(axis=other)).tolist()


def _components(atoms: list[set]) -> list[list[int]]:
    parent = list(range(len(atoms)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict = {}
    for i, touched in enumerate(atoms):
        for key in touched:
            if key in owner:
                parent[find(i)] = find(owner[key])
            else:
                owner[key] = i
    out: dict[int, list[int]] = {}
    for i in range(len(atoms)):
        out.setdefault(find(i), []).append(i)
    return list(out.values())


def _cut_at_mixing_layers(proto: onnx.ModelProto, constants: set[str]) -> tuple[onnx.ModelProto, dict]:
    """The model with every channel-mixing layer's data input made a graph input of its own.

    Mixing layers: Conv whose output channels read more than one input channel each (not
    depthwise), ConvTranspose, Gemm, and MatMul with a constant operand. Fed the values the whole
    model computes there, the cut model computes the same; but a change upstream of such a layer
    stops at it, so what a perturbation reaches is what it reaches without passing a layer that
    mixes channels - the coupling a group is made of. Returns the model and {cut input: tensor}.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    shapes = {t.name: list(t.dims) for t in out.graph.initializer}
    cuts = {}
    for i, node in enumerate(out.graph.node):
        if not _mixes_channels(node, constants, shapes):
            continue
        data = 0 if node.op_type != "MatMul" or node.input[1] in constants else 1
        source = node.input[data]
        cut = f"{source}::cut{i}"
        cuts[cut] = source
        node.input[data] = cut
        out.graph.input.append(helper.make_tensor_value_info(cut, onnx.TensorProto.FLOAT, None))
    return out, cuts


def _mixes_channels(node, constants: set[str], shapes: dict) -> bool:
    if node.op_type in ("ConvTranspose", "Gemm"):
        return True
    if node.op_type == "MatMul":
        return any(i in constants for i in node.input)
    if node.op_type != "Conv":
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    per_group = shapes.get(node.input[1], [0, 0])[1]
    return not (group > 1 and per_group == 1)


def _with_constant_nodes_as_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    keep = []
    for node in out.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            out.graph.initializer.append(tensor)
        else:
            keep.append(node)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def _session(proto: onnx.ModelProto, weights: list[str], tensors: list[str]) -> ort.InferenceSession:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    inits = {t.name: t for t in model.graph.initializer}
    declared = {i.name for i in model.graph.input}
    for name in weights:
        if name not in declared:
            t = inits[name]
            model.graph.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    outputs = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in outputs:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # weights as inputs: one warning per initializer otherwise
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
