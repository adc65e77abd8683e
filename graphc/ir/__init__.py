"""graphc's in-memory IR: onnx-graphsurgeon graphs plus model fields, helpers and statistics."""
from graphc.ir.model import Model, file_size, from_proto, load, model_bytes, save, to_proto
from graphc.ir.opset import upgrade_opset
from graphc.ir.shapes import TensorInfo, infer_shapes
from graphc.ir.stats import ModelStats, all_nodes, node_macs, stats_at
from graphc.ir.structure import check_structure, node_label, toposort
from graphc.ir.subgraphs import named_nodes, path_name, subgraphs, walk_graphs
from graphc.ir.usedef import (
    NameFactory,
    bypass,
    constant_value,
    consumers,
    detach,
    drop_detached,
    is_constant,
    is_graph_input,
    is_graph_output,
    is_standard_op,
    only_consumer,
    producer,
    remove_dead_nodes,
    remove_nodes,
    replace_uses,
    scalar_value,
)

__all__ = [
    "Model", "load", "save", "from_proto", "to_proto", "model_bytes", "file_size",
    "upgrade_opset", "TensorInfo", "infer_shapes", "ModelStats", "all_nodes", "stats_at", "node_macs",
    "check_structure", "node_label", "toposort", "NameFactory", "bypass", "constant_value",
    "consumers", "detach", "drop_detached", "is_constant", "is_graph_input", "is_graph_output", "is_standard_op",
    "only_consumer", "producer", "remove_dead_nodes", "remove_nodes", "replace_uses", "scalar_value", "subgraphs",
    "walk_graphs", "named_nodes", "path_name",
]
