"""Load a PyTorch state_dict of the authors' ECAPA-TDNN models into the Keras model of `build_model`.

The authors' checkpoints (Jungwoo4021/ECAPAwithCCSandFSA, experiments #08-#16 and #22-#27)
are `state_dict`s of three layouts, told apart by their keys:

    vanilla ECAPA (#8)   conv1, bn1, layer1..3, layer4 (1x1 conv), attention, bn5, fc6, bn6
    CCS (#9-#12)         mid_band_extractor.{conv1, bn1, layer1..3, layer4}, attention, ...
    CCS + FSA (#13-#16)  band1..4.{conv1, bn1, layer1..3}, layer4 (an SE-Res2Block), attention, ...

plus, for raw-audio models, torchaudio's MelSpectrogram buffers `torchfbank.0.spectrogram.window`
and `torchfbank.0.mel_scale.fb`, which are checked against the Keras front end (not loaded:
the Keras front end computes the same tables itself).

This module does not import torch: pass the state_dict as NumPy arrays,
``{k: v.numpy() for k, v in torch.load(path, map_location="cpu").items()}``.

What the conversion does, besides renaming:
- Conv1d weights (out, in, k) become Keras Conv1D kernels (k, in, out); 1x1 convs and
  Linear weights that are Dense layers here are transposed;
- BatchNorm running_mean / running_var become moving_mean / moving_variance (torch's
  `momentum=0.1` is Keras's `momentum=0.9`, the same update); `num_batches_tracked` has no
  Keras counterpart and is dropped;
- CCS without FSA: the authors' pooling input is [stop channels, last conv]; the Keras model's
  is [last conv, stop channels]. The pooling and head weights are permuted accordingly (the
  attention input's three parts, the attention output, bn5's mean and std halves, fc6's
  inputs), which computes the same function;
- a checkpoint saved from `nn.DataParallel` / DDP (keys prefixed `module.`) loads as well.

Example (with torch installed, an authors' #15 checkpoint `best.pt`)::

    state = {k: v.numpy() for k, v in torch.load("best.pt", map_location="cpu").items()}
    model = build_model(ECAPAConfig(channels=1024, ccs={"stop": 512}, fsa={"enabled": True}), 10)
    load_torch_state_dict(model, state)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import keras
import numpy as np

from keras_mgc.frontend import LogMelSpectrogram, mel_filterbank, periodic_hann

#: torchaudio MelSpectrogram buffers in the authors' raw-audio checkpoints.
FBANK_WINDOW = "torchfbank.0.spectrogram.window"
FBANK_FILTERS = "torchfbank.0.mel_scale.fb"


class TorchWeightsError(ValueError):
    """A state_dict that does not fit the Keras model; the message names every bad key."""


@dataclass
class _Entry:
    key: str  # state_dict key
    variable: Any  # the Keras variable it fills
    torch_shape: tuple[int, ...]  # the shape the state_dict must hold
    convert: Callable[[np.ndarray], np.ndarray]  # torch layout -> Keras layout


class _Plan:
    """Which state_dict key fills which Keras variable, and how."""

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.dropped: set[str] = set()  # keys with no Keras counterpart (num_batches_tracked)

    def add(self, key: str, variable: Any, torch_shape: tuple[int, ...],
            convert: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> None:
        self.entries.append(_Entry(key, variable, tuple(torch_shape), convert))

    def conv(self, key: str, layer: keras.layers.Conv1D) -> None:
        """torch Conv1d (out, in, k) -> Keras Conv1D (k, in, out)."""
        k, cin, cout = layer.kernel.shape
        self.add(f"{key}.weight", layer.kernel, (cout, cin, k), lambda a: a.transpose(2, 1, 0))
        self.add(f"{key}.bias", layer.bias, (cout,))

    def pointwise(self, key: str, kernel: Any, bias: Any, linear: bool = False,
                  rows: np.ndarray | None = None, cols: np.ndarray | None = None) -> None:
        """torch 1x1 Conv1d (out, in, 1) or Linear (out, in) -> a Keras (in, out) kernel.

        `rows` / `cols` reorder the Keras kernel's inputs / outputs (Keras index i takes torch's rows[i]).
        """
        cin, cout = kernel.shape
        shape = (cout, cin) if linear else (cout, cin, 1)

        def convert(a: np.ndarray) -> np.ndarray:
            w = (a if linear else a[..., 0]).T
            w = w if rows is None else w[rows]
            return w if cols is None else w[:, cols]

        self.add(f"{key}.weight", kernel, shape, convert)
        self.add(f"{key}.bias", bias, (cout,), lambda a: a if cols is None else a[cols])

    def batch_norm(self, key: str, layer: keras.layers.BatchNormalization, order: np.ndarray | None = None) -> None:
        n = layer.gamma.shape[0]
        pick = (lambda a: a) if order is None else (lambda a: a[order])
        for torch_name, variable in (("weight", layer.gamma), ("bias", layer.beta),
                                     ("running_mean", layer.moving_mean), ("running_var", layer.moving_variance)):
            self.add(f"{key}.{torch_name}", variable, (n,), pick)
        self.dropped.add(f"{key}.num_batches_tracked")

    def unit(self, conv_key: str, bn_key: str, unit: Any) -> None:
        """A Keras ConvReluBN from a torch Conv1d + BatchNorm1d pair."""
        self.conv(conv_key, unit.conv)
        self.batch_norm(bn_key, unit.bn)

    def block(self, key: str, block: Any) -> None:
        """A Keras SERes2Block from the authors' Bottle2neck."""
        self.unit(f"{key}.conv1", f"{key}.bn1", block.conv_in)
        for i, unit in enumerate(block.res2.convs):
            self.unit(f"{key}.convs.{i}", f"{key}.bns.{i}", unit)
        self.unit(f"{key}.conv3", f"{key}.bn3", block.conv_out)
        for index, dense in ((1, block.se.squeeze), (3, block.se.excite)):
            self.pointwise(f"{key}.se.se.{index}", dense.kernel, dense.bias)
        if block.shortcut is not None:
            self.conv(f"{key}.upsample", block.shortcut)

    def extractor(self, prefix: str, extractor: Any) -> None:
        self.unit(f"{prefix}conv1", f"{prefix}bn1", extractor.first)
        for i, block in enumerate(extractor.blocks):
            self.block(f"{prefix}layer{i + 1}", block)


def _ecapa_layers(model: keras.Model) -> tuple[Any, Any, Any, Any]:
    """(SubBandAggregator, last conv or aggregation block, pooling, head) of a build_model ECAPA."""
    try:
        backbone, head = model.get_layer("backbone"), model.get_layer("head")
        bands, pooling = backbone.get_layer("sub_bands"), backbone.get_layer("pooling")
    except ValueError:
        raise TorchWeightsError(
            f"load_torch_state_dict: model '{model.name}' is not an ECAPA-TDNN classifier from build_model "
            "(needs layers backbone/sub_bands, backbone/pooling and head)") from None
    names = {layer.name for layer in backbone.layers}
    last = backbone.get_layer("aggregation" if "aggregation" in names else "last_conv")
    return bands, last, pooling, head


def _pooling_order(bands: Any, pooling: Any) -> np.ndarray | None:
    """Keras pooled channel i is the authors' channel order[i] (None: same order).

    Only CCS without FSA differs: the authors pool [stops, last conv], this model [last conv, stops].
    """
    if len(bands.extractors) != 1 or not bands.has_stop:
        return None
    pooled = pooling._args["channels"]
    stop = len(bands.extractors[0].blocks) * bands._args["stop_channels"][0]
    return np.concatenate([np.arange(stop, pooled), np.arange(stop)])


def torch_plan(model: keras.Model) -> _Plan:
    """The mapping from the authors' state_dict keys to the variables of `model`."""
    bands, last, pooling, head = _ecapa_layers(model)
    plan = _Plan()
    fsa, ccs = len(bands.extractors) > 1, bands.has_stop
    if fsa:
        for i, extractor in enumerate(bands.extractors):
            plan.extractor(f"band{i + 1}.", extractor)
        plan.block("layer4", last)
    else:
        prefix = "mid_band_extractor." if ccs else ""
        plan.extractor(prefix, bands.extractors[0])
        plan.conv(f"{prefix}layer4", last)

    order = _pooling_order(bands, pooling)
    pooled = pooling._args["channels"]
    twice = None if order is None else np.concatenate([order, order + pooled])
    thrice = None if order is None else np.concatenate([order, order + pooled, order + 2 * pooled])
    plan.pointwise("attention.0", pooling.attention_kernel, pooling.attention_bias, rows=thrice)
    plan.batch_norm("attention.2", pooling.attention_bn)
    plan.pointwise("attention.4", pooling.attention_out.kernel, pooling.attention_out.bias, cols=order)
    plan.batch_norm("bn5", head.embedding_bn, twice)
    plan.pointwise("fc6", head.dense.kernel, head.dense.bias, linear=True, rows=twice)
    plan.batch_norm("bn6", head.logit_bn)
    return plan


def _frontend(model: keras.Model) -> LogMelSpectrogram | None:
    for layer in model.layers:
        if isinstance(layer, LogMelSpectrogram):
            return layer
    return None


def _check_frontend(model: keras.Model, state: Mapping[str, np.ndarray]) -> list[str]:
    """Problems with the torchaudio buffers of `state` against the model's front end."""
    present = [k for k in (FBANK_WINDOW, FBANK_FILTERS) if k in state]
    frontend = _frontend(model)
    if frontend is None:
        return [f"{k}: the state dict computes mels from audio but the Keras model takes mels (model.input: mel)"
                for k in present]
    problems = []
    if FBANK_WINDOW in state:
        expected = periodic_hann(frontend.win_length)
        got = np.asarray(state[FBANK_WINDOW], np.float64)
        if got.shape != expected.shape or np.abs(got - expected).max() > 1e-5:
            problems.append(f"{FBANK_WINDOW}: not the periodic Hann window of {frontend.win_length} samples "
                            f"that the model's front end uses (shape {got.shape})")
    if FBANK_FILTERS in state:
        expected = mel_filterbank(frontend.sample_rate, frontend.n_fft, frontend.n_mels, frontend.f_min,
                                  frontend.f_max)
        got = np.asarray(state[FBANK_FILTERS], np.float64)
        if got.shape != expected.shape:
            problems.append(f"{FBANK_FILTERS}: shape {got.shape}, the model's front end has {expected.shape} "
                            f"(n_fft // 2 + 1, n_mels) for n_fft={frontend.n_fft}, n_mels={frontend.n_mels}")
        elif np.abs(got - expected).max() > 1e-4:
            problems.append(f"{FBANK_FILTERS}: differs from the model's HTK mel filters by up to "
                            f"{np.abs(got - expected).max():.3g} (another sample rate, f_min/f_max or mel scale?)")
    return problems


def _listed(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_torch_state_dict(model: keras.Model, state_dict: Mapping[str, Any]) -> None:
    """Fill `model` (an ECAPA-TDNN from `build_model`) with the weights of an authors'-layout state_dict.

    `state_dict` maps key -> array (NumPy, or anything `np.asarray` takes). Every parameter and
    BatchNorm running statistic is loaded; nothing is loaded unless everything fits: missing,
    unexpected and mis-shaped keys raise one TorchWeightsError naming them.
    """
    state = {k: v for k, v in state_dict.items()}
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    plan = torch_plan(model)
    expected = {e.key for e in plan.entries}
    known = expected | plan.dropped | {FBANK_WINDOW, FBANK_FILTERS}
    missing = [e.key for e in plan.entries if e.key not in state]
    unexpected = sorted(k for k in state if k not in known)
    shapes = [f"{e.key}: {tuple(np.shape(state[e.key]))} in the state dict, the Keras model needs {e.torch_shape}"
              for e in plan.entries if e.key in state and tuple(np.shape(state[e.key])) != e.torch_shape]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
    if shapes:
        problems.append(f"mis-shaped keys ({len(shapes)}):\n    " + "\n    ".join(shapes[:12])
                        + (f"\n    ... ({len(shapes) - 12} more)" if len(shapes) > 12 else ""))
    problems += _check_frontend(model, state)
    if problems:
        raise TorchWeightsError(
            f"the state dict does not fit model '{model.name}' (is it the same architecture, C, CCS/FSA "
            "setting and number of classes?):\n  " + "\n  ".join(problems))
    for entry in plan.entries:
        value = entry.convert(np.asarray(state[entry.key], dtype=np.float32))
        entry.variable.assign(value.astype(entry.variable.dtype))
