"""A voice-activity detector with trained weights, written the way spox writes silero-vad: the whole
network of each sample rate sits in one branch of ``If(sr == 16000)`` (corpus entry
``vad_trained_if``; dev-only: torch).

Each branch is a conv + LSTM frame classifier trained on seeded synthetic clips
(:mod:`vad_signals`: speech-like harmonic signals with formants and syllables vs. white/pink/brown
noise, hum and beeps), one network per rate: ``audio [N, 4096]`` -> divided by its peak (an
automatic gain: the levels span 24 dB, and an int8 input range set by loud clips would leave
quiet ones a few steps) -> Conv1d(1->16, k, stride 4) ->
4 x [ReLU, Conv1d(k 5, stride 2)] (16-32-32-32-32 channels) -> ReLU -> LSTM(32) over the 64 frames
-> Linear(32 -> 1) -> Sigmoid -> ``speech [N, 64]`` (k = 16 at 16 kHz, 8 at 8 kHz). Training adds
noise of two 8-bit steps after each ReLU (:func:`rounding_noise`; nothing of it is exported).

Export: each network goes through the TorchScript exporter (opset 16) on its own, then its graph
becomes a branch: every tensor and node name gets the branch's prefix, initializers become
Constant nodes of the branch (as spox writes them), and the branch reads the outer ``audio`` by
name (outer scope). The top graph is ``Equal(sr, 16000) -> If``.
"""
from __future__ import annotations

import io
import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import vad_signals

LOG = logging.getLogger("models.vad_trained")
SEED = 18
OPSET = 16
TRAIN_CLIPS = 2048
EPOCHS = 16
FIRST_KERNEL = {16000: 16, 8000: 8}


def rounding_noise(x):
    """Training only: uniform noise of +-2 steps of an 8-bit range set by the batch's largest
    activation (a calibrated per-tensor range covers every clip: int8 rounding adds +-1/2 step
    of it, more where calibration clips the range), so the classifier does not hang on
    differences below a few steps."""
    import torch

    step = x.detach().amax() / 255.0
    return (torch.rand_like(x) * 2 - 1) * (2 * step)


def branch_net(sr: int):
    import torch
    from torch import nn

    class BranchNet(nn.Module):
        def __init__(self, k0: int):
            super().__init__()
            layers = [nn.Conv1d(1, 16, k0, stride=4, padding=k0 // 2 - 2)]
            for cin, cout in ((16, 32), (32, 32), (32, 32), (32, 32)):
                layers += [nn.ReLU(), nn.Conv1d(cin, cout, 5, stride=2, padding=2)]
            self.convs = nn.Sequential(*layers, nn.ReLU())
            self.lstm = nn.LSTM(32, 32, batch_first=True)
            self.head = nn.Linear(32, 1)

        def forward(self, audio):
            peak = audio.abs().amax(dim=1, keepdim=True)   # automatic gain: the clip's peak -> 1
            x = (audio / (peak + 1e-4)).unsqueeze(1)
            for layer in self.convs:                       # -> [N, 32, 64]
                x = layer(x)
                if self.training and isinstance(layer, nn.ReLU):
                    x = x + rounding_noise(x)
            x, _ = self.lstm(x.transpose(1, 2))            # [N, 64, 32]
            return torch.sigmoid(self.head(x)).squeeze(-1)  # [N, 64]

    torch.manual_seed(SEED + sr)
    return BranchNet(FIRST_KERNEL[sr])


def train(sr: int):
    import torch

    net = branch_net(sr)
    audio, labels = vad_signals.dataset(SEED, TRAIN_CLIPS, sr)
    x, y = torch.from_numpy(audio), torch.from_numpy(labels.astype(np.float32))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=EPOCHS * (TRAIN_CLIPS // 32))
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        order = torch.randperm(TRAIN_CLIPS, generator=gen)
        total = 0.0
        for i in range(0, TRAIN_CLIPS - 31, 32):
            idx = order[i:i + 32]
            loss = torch.nn.functional.binary_cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss)
        LOG.info("  %d Hz epoch %d loss %.4f", sr, epoch, total / (TRAIN_CLIPS // 32))
    net.eval()
    return net


def export_branch(net, sr: int) -> onnx.GraphProto:
    """The net's TorchScript export as an If branch named ``vad{sr // 1000}k``."""
    import torch

    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, vad_signals.SAMPLES),), buf, dynamo=False, opset_version=OPSET,
                      input_names=["audio"], output_names=["speech"],
                      dynamic_axes={"audio": {0: "N"}, "speech": {0: "N"}})
    graph = onnx.load_from_string(buf.getvalue()).graph
    prefix = f"vad{sr // 1000}k."

    def rename(name: str) -> str:
        return name if name in ("audio", "") else prefix + name

    nodes = [helper.make_node("Constant", [], [rename(init.name)], name=rename(init.name) + ".const",
                              value=numpy_helper.from_array(numpy_helper.to_array(init), rename(init.name)))
             for init in graph.initializer]
    for node in graph.node:
        node.name = rename(node.name or node.output[0])
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        nodes.append(node)
    out = helper.make_tensor_value_info(rename("speech"), TensorProto.FLOAT, ["N", vad_signals.FRAMES])
    return helper.make_graph(nodes, prefix.rstrip("."), [], [out])


def vad_trained_if(nets: dict[int, object]) -> onnx.ModelProto:
    """audio [N, 4096], sr int64 scalar -> speech probability per frame [N, 64]."""
    nodes = [
        helper.make_node("Equal", ["sr", "sr_16k"], ["is_16k"], name="Equal_0"),
        helper.make_node("If", ["is_16k"], ["speech"], name="If_0",
                         then_branch=export_branch(nets[16000], 16000), else_branch=export_branch(nets[8000], 8000)),
    ]
    graph = helper.make_graph(
        nodes, "vad_trained", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N", vad_signals.SAMPLES]),
                               helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("speech", TensorProto.FLOAT, ["N", vad_signals.FRAMES])],
        [numpy_helper.from_array(np.array(16000, np.int64), "sr_16k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="spox",
                              producer_version="graphc corpus (trained VAD)")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def calibration_feeds(count: int) -> dict[str, np.ndarray]:
    """``count`` feeds, one per entry, alternating 16 kHz and 8 kHz clips (seed apart from training
    and from the held-out set, :data:`vad_signals.HELDOUT_SEED`)."""
    audio = np.empty((count, 1, vad_signals.SAMPLES), np.float32)
    for sr in vad_signals.RATES:
        clips, _ = vad_signals.dataset(SEED + 1, count, sr)
        rows = np.arange(count)[(np.arange(count) % 2 == 0) == (sr == 16000)]
        audio[rows, 0] = clips[rows]
    sr = np.where(np.arange(count) % 2 == 0, 16000, 8000).astype(np.int64)
    return {"audio": audio, "sr": sr}


def build(path, calib: int) -> None:
    import torch

    torch.set_num_threads(1)  # two threads on a loaded 2-core machine were 30x slower
    nets = {sr: train(sr) for sr in vad_signals.RATES}
    model = vad_trained_if(nets)
    onnx.save(model, str(path))
    np.savez_compressed(path.with_suffix(".npz"), **calibration_feeds(calib))
