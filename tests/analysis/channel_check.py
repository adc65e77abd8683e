"""Shared checks for the channel-analysis tests: masking vs removal in onnxruntime.

``check_group(model, gid, indices)``: analyse a copy, remove ``indices`` of group ``gid``; mask the
same channels (producers' output weights and biases zeroed) in another copy; both must give the
same outputs (rtol 1e-5, atol 1e-6) and the removed model must pass the full ONNX checker.
"""
from __future__ import annotations

import numpy as np
import onnx

import graphc
from graphc.analysis import analyze_channels, mask_channels, remove_channels
from graphc.ir import Model, infer_shapes, to_proto
from support import random_feeds, run

RTOL, ATOL = 1e-5, 1e-6


def analyse(model: Model, input_shapes=None, attention="heads"):
    """Groups from the declared shapes (as ctx.shapes()); ``input_shapes`` only for MAC estimates."""
    cost = infer_shapes(model, input_shapes) if input_shapes else None
    return analyze_channels(model.graph, infer_shapes(model), model.opset, attention=attention, cost_shapes=cost)


def random_subset(rng, size: int) -> list[int]:
    k = int(rng.integers(1, size)) if size > 1 else 0
    return sorted(rng.choice(size, size=k, replace=False).tolist())


def masked_and_removed(model: Model, plan: dict[int, list[int]], input_shapes=None, attention="heads",
                       **kwargs):
    """(masked model, removed model, removal result) for {group id: indices}."""
    removed = model.copy()
    analysis = analyse(removed, input_shapes, attention)
    masked = model.copy()
    groups = {analysis.groups[g]: idx for g, idx in plan.items()}
    for group, idx in groups.items():
        mask_channels(masked.graph, group, idx)
    result = remove_channels(removed.graph, groups, **kwargs)
    return masked, removed, result


def assert_equivalent(masked: Model, removed: Model, feeds, rtol=RTOL, atol=ATOL) -> None:
    proto = to_proto(removed)
    onnx.checker.check_model(proto, full_check=True)
    want = run(masked, feeds)
    got = run(removed, feeds)
    for w, g in zip(want, got):
        assert w.shape == g.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def check_group(model: Model, gid: int, indices, feeds, input_shapes=None, attention="heads", **kwargs):
    masked, removed, result = masked_and_removed(model, {gid: indices}, input_shapes, attention, **kwargs)
    assert_equivalent(masked, removed, feeds)
    return result


def boundary_tensors(analysis, groups) -> list[str]:
    """Outputs of the consumers where the removed channels leave the group: the rewrite's edge."""
    import onnx_graphsurgeon as gs

    names = []
    for g in groups:
        for sink in analysis.masked_values(g).sinks:
            for t in sink.node.outputs:
                users = list(t.outputs)
                if len(users) == 1 and users[0].op == "Add" and any(isinstance(i, gs.Constant) for i in users[0].inputs):
                    t = users[0].outputs[0]          # removal folds into the bias Add that follows
                if t.name not in names:
                    names.append(t.name)
    return names


def removed_positions(groups: dict) -> dict:
    """{(tensor, axis): positions} the plan {group: indices} removes."""
    out: dict = {}
    for g, idx in groups.items():
        for key, pos in g.positions.items():
            out.setdefault(key, []).extend(pos[np.asarray(idx, dtype=np.int64)].reshape(-1).tolist())
    return out


def kept(array: np.ndarray, name: str, removed: dict) -> np.ndarray:
    """The masked model's tensor restricted to the positions the removed model keeps."""
    for (tensor, axis), pos in removed.items():
        if tensor == name and axis < array.ndim:
            array = np.delete(array, sorted(set(pos)), axis=axis)
    return array


def run_with(model: Model, feeds, extra: list[str]):
    proto = to_proto(model)
    have = {o.name for o in proto.graph.output}
    for name in extra:
        if name not in have:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return dict(zip([o.name for o in proto.graph.output], run(proto, feeds)))


def assert_groups_exact(model: Model, trials: int = 3, seed: int = 0, input_shapes=None,
                        attention="heads") -> int:
    """Every prunable group: ``trials`` random subsets masked vs removed. Returns the check count."""
    analysis = analyse(model, input_shapes, attention)
    feeds = random_feeds(model, input_shapes)
    rng = np.random.default_rng(seed)
    checks = 0
    for g in analysis.prunable:
        for _ in range(trials if g.size > 1 else 0):
            idx = random_subset(rng, g.size)
            masked, removed, _ = masked_and_removed(model, {g.id: idx}, input_shapes, attention)
            try:
                assert_equivalent(masked, removed, feeds)
            except AssertionError as exc:
                raise AssertionError(f"group {g.id} ({g.size} ch), removing {idx}: {exc}") from None
            checks += 1
    return checks


def check_plan(model: Model, plan: dict[int, list[int]], feeds, *, final_tol=(RTOL, ATOL), attention="heads",
               boundary_rtol: float = RTOL):
    """Masked vs removed for a plan {group id: indices}: graph outputs elementwise at ``final_tol``
    (rtol, atol); the consumers' outputs (where the rewrite ends) norm-wise at ``boundary_rtol``:
    their elementwise error near zero is float32 cancellation on large tensors, not a rewrite error.
    With many groups in one plan, consumers also carry rounding from upstream removals."""
    removed_model = model.copy()
    analysis = analyse(removed_model, attention=attention)
    masked = model.copy()
    groups = {analysis.groups[g]: idx for g, idx in plan.items()}
    names = boundary_tensors(analysis, groups)
    for group, idx in groups.items():
        mask_channels(masked.graph, group, idx)
    removed = removed_positions(groups)
    result = remove_channels(removed_model.graph, groups)
    onnx.checker.check_model(to_proto(removed_model), full_check=True)
    want, got = run_with(masked, feeds, names), run_with(removed_model, feeds, names)
    for out in model.graph.outputs:
        np.testing.assert_allclose(got[out.name], want[out.name], rtol=final_tol[0], atol=final_tol[1],
                                   err_msg=f"graph output '{out.name}'")
    for name in names:
        w, g = kept(want[name], name, removed), got[name]
        assert w.shape == g.shape, (name, w.shape, g.shape)
        err = float(np.abs(w - g).max()) if w.size else 0.0
        bound = boundary_rtol * float(np.abs(w).max()) + ATOL
        assert err <= bound, f"consumer output '{name}': max error {err} > {bound}"
    return result
