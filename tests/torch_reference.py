"""A PyTorch reference of the authors' ECAPA-TDNN (#8), ECAPA + CCS (#12) and ECAPA + CCS + FSA (#15).

Test-only (torch is the `parity` extra). It is this project's own code, written from the
paper (Heo et al., "Convolution Channel Separation and Frequency Sub-bands Aggregation for
Music Genre Classification"), from BUILD_NOTES.md ("Design facts") and from reading the authors'
`model.py` of experiments #08, #12 and #15 (Jungwoo4021/ECAPAwithCCSandFSA, which has no
licence, so none of it is copied here). What it takes from their files is the checkpoint
format: the state_dict key names and the order in which channels are concatenated, so that
one of their checkpoints loads into `ECAPAReference` with `strict=True`. BUILD_NOTES.md
("Parity with the authors' PyTorch models") says how it was checked once against their
files: same keys, shapes and counts, identical outputs for the same weights.

Layouts (C continuous channels, M stop channels per block, "L" the last conv's outputs):

    vanilla (#8)  conv1, bn1, layer1..3 (SE-Res2Blocks), layer4 = Conv1d(3C, 1536) + ReLU
    ccs (#12)     mid_band_extractor.{conv1, bn1, layer1..3, layer4 = Conv1d(3C, 1.5 (C + M)) + ReLU};
                  the log-mel mean is removed inside the extractor; pooling sees
                  [stop_1, stop_2, stop_3, last]  (stop channels FIRST)
    fsa (#15)     band1..4.{conv1, bn1, layer1..3} on mel bins [0:18], [10:28], [20:38], [30:48];
                  layer4 = SE-Res2Block(3 * sum(C) -> 1.5 * sum(C), kernel 1), no ReLU after;
                  pooling sees [last, band1 stops, ..., band4 stops]  (stop channels LAST)
    all           torchfbank.0 (torchaudio MelSpectrogram: buffers spectrogram.window and
                  mel_scale.fb), attention.{0: Conv1d(3P, A), 2: BN, 4: Conv1d(A, P)},
                  bn5 (2P), fc6 (Linear 2P -> classes), bn6 (classes); P = pooled channels

`forward` returns the logits (the output of bn6); the authors' forward returns the softmax
(or the cross-entropy with labels), which is `logits.softmax(-1)` / `F.cross_entropy`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PAPER_BANDS = ((0, 18), (10, 28), (20, 38), (30, 48))


# --------------------------------------------------------------------------- front end


class _Spectrogram(nn.Module):
    """The power STFT of torchaudio.transforms.Spectrogram (centred, reflect-padded, power 2)."""

    def __init__(self, n_fft: int, win_length: int, hop_length: int) -> None:
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.register_buffer("window", torch.hann_window(win_length))  # periodic, as window_fn=torch.hann_window

    def forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # In float32 the stored window, as torchaudio; in float64 the window computed in float64:
        # torch.hann_window's float32 rounding (up to 2e-4 relative near the edges) alone moves the
        # top mel bins of loud frames by ~2e-4 in log-mel.
        window = self.window if dtype == self.window.dtype else torch.hann_window(self.win_length, dtype=dtype)
        spec = torch.stft(x.to(dtype), self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=window, center=True, pad_mode="reflect", normalized=False,
                          onesided=True, return_complex=True)
        return spec.abs() ** 2


def htk_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """torchaudio.functional.melscale_fbanks(norm=None, mel_scale="htk"): (n_freqs, n_mels) triangles."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    m_pts = torch.linspace(mel(f_min), mel(f_max), n_mels + 2, dtype=torch.float64)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)
    slopes = f_pts[None, :] - all_freqs[:, None]
    f_diff = f_pts[1:] - f_pts[:-1]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


class _MelScale(nn.Module):
    def __init__(self, n_mels: int, sample_rate: int, n_freqs: int, f_min: float = 0.0,
                 f_max: float | None = None) -> None:
        super().__init__()
        f_max = float(sample_rate // 2) if f_max is None else f_max
        fb = htk_filterbank(n_freqs, f_min, f_max, n_mels, sample_rate)
        self.register_buffer("fb", fb.float())  # float32, as torchaudio stores it
        self.fb64 = fb  # not a buffer: the float64 path uses the unrounded filters

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        fb = self.fb if power.dtype == self.fb.dtype else self.fb64.to(power.dtype)
        return torch.matmul(power.transpose(-1, -2), fb).transpose(-1, -2)


class MelSpectrogram(nn.Module):
    """torchaudio.transforms.MelSpectrogram(sample_rate=22050, n_fft=2048, win_length=512,
    hop_length=256, window_fn=torch.hann_window, n_mels=48) with its other defaults spelled out
    (center=True, pad_mode="reflect", power=2, norm=None, mel_scale="htk", f_min=0, f_max=sr/2).

    `dtype` is the precision of the STFT and mel product: torchaudio computes in the input's
    float32; the Keras front end computes the DFT in float64 (keras_mgc.frontend), so the
    parity tests use float64 here to compare the networks, not two roundings of the DFT.
    """

    def __init__(self, sample_rate: int = 22050, n_fft: int = 2048, win_length: int = 512, hop_length: int = 256,
                 n_mels: int = 48, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype
        self.spectrogram = _Spectrogram(n_fft, win_length, hop_length)
        self.mel_scale = _MelScale(n_mels, sample_rate, n_fft // 2 + 1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.mel_scale(self.spectrogram(waveform, self.dtype))


def log_mel(fbank: nn.Module, waveform: torch.Tensor, subtract_mean: bool) -> torch.Tensor:
    """log(mel + 1e-6), optionally minus each bin's mean over time; (batch, n_mels, frames), float32."""
    with torch.no_grad():
        x = torch.log(fbank(waveform) + 1e-6)
        if subtract_mean:
            x = x - x.mean(dim=-1, keepdim=True)
    return x.float()


# --------------------------------------------------------------------------- blocks


def conv_relu_bn(conv: nn.Conv1d, bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """The authors' unit everywhere: convolution, then ReLU, then BatchNorm."""
    return bn(F.relu(conv(x)))


class SEModule(nn.Module):
    """Squeeze-excitation: time mean -> 1x1 conv to `bottleneck` -> ReLU -> 1x1 conv -> sigmoid gates."""

    def __init__(self, channels: int, bottleneck: int = 128) -> None:
        super().__init__()
        # Sequential indices 1 and 3 hold the weights, as in the authors' checkpoints.
        self.se = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Conv1d(channels, bottleneck, 1), nn.ReLU(),
                                nn.Conv1d(bottleneck, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.se(x)


class SERes2Block(nn.Module):
    """SE-Res2Block: 1x1 unit, Res2Net dilated units over `scale` groups (the last group passes
    unchanged, group i adds group i-1's output first), 1x1 unit, SE, plus the input (through a
    1x1 conv `upsample` when the widths differ)."""

    def __init__(self, inplanes: int, planes: int, kernel_size: int, dilation: int, scale: int = 8,
                 se_channels: int = 128) -> None:
        super().__init__()
        self.width = planes // scale
        self.nums = scale - 1
        self.conv1 = nn.Conv1d(inplanes, self.width * scale, 1)
        self.bn1 = nn.BatchNorm1d(self.width * scale)
        pad = (kernel_size // 2) * dilation
        self.convs = nn.ModuleList(nn.Conv1d(self.width, self.width, kernel_size, dilation=dilation, padding=pad)
                                   for _ in range(self.nums))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(self.nums))
        self.conv3 = nn.Conv1d(self.width * scale, planes, 1)
        self.bn3 = nn.BatchNorm1d(planes)
        self.upsample = nn.Conv1d(inplanes, planes, 1) if inplanes != planes else None
        self.se = SEModule(planes, se_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.upsample is None else self.upsample(x)
        groups = torch.split(conv_relu_bn(self.conv1, self.bn1, x), self.width, dim=1)
        outputs, previous = [], None
        for i in range(self.nums):
            previous = conv_relu_bn(self.convs[i], self.bns[i], groups[i] if previous is None else groups[i] + previous)
            outputs.append(previous)
        h = conv_relu_bn(self.conv3, self.bn3, torch.cat(outputs + [groups[self.nums]], dim=1))
        return self.se(h) + residual


def _add_extractor(owner: nn.Module, in_bins: int, channels: int, stop: int, last: int | None, scale: int,
                   se_channels: int, dilations: Sequence[int] = (2, 3, 4)) -> None:
    """Register the first unit, the blocks and (if `last`) the 1x1 last conv on `owner`."""
    owner.conv1 = nn.Conv1d(in_bins, channels, 5, padding=2)
    owner.bn1 = nn.BatchNorm1d(channels)
    owner.n_blocks, owner.stop = len(dilations), stop
    for i, d in enumerate(dilations):
        setattr(owner, f"layer{i + 1}", SERes2Block(channels, channels + stop, 3, d, scale, se_channels))
    if last is not None:
        owner.layer4 = nn.Conv1d(len(dilations) * channels, last, 1)


def _run_extractor(owner: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Running sums over the blocks; returns (concatenated continuous outputs, stop outputs per block)."""
    running = conv_relu_bn(owner.conv1, owner.bn1, x)
    continuous, stops = [], []
    for i in range(owner.n_blocks):
        out = getattr(owner, f"layer{i + 1}")(running)
        if owner.stop:
            out, stop = out[:, : -owner.stop], out[:, -owner.stop :]
            stops.append(stop)
        continuous.append(out)
        running = running + out
    return torch.cat(continuous, dim=1), stops


class FeatureExtractor(nn.Module):
    """One frequency band's (or the whole mel's) first conv + CCS blocks (+ last conv for #12)."""

    def __init__(self, in_bins: int, channels: int, stop: int, last: int | None, scale: int, se_channels: int,
                 subtract_mean: bool = False) -> None:
        super().__init__()
        self.subtract_mean = subtract_mean
        _add_extractor(self, in_bins, channels, stop, last, scale, se_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.subtract_mean:
            x = x - x.mean(dim=-1, keepdim=True)
        return _run_extractor(self, x)


# --------------------------------------------------------------------------- model


class ECAPAReference(nn.Module):
    """The authors' #8 / #12 / #15 family at any size.

    variant "vanilla": `channels` = C, last conv fixed at `last_channels` (the authors: 1536);
    variant "ccs": `channels` = C, `stop` = M, last conv 1.5 (C + M);
    variant "fsa": `channels` and `stop` are per band (the paper's totals / 4), aggregation
    SE-Res2Block 3 * 4C -> 1.5 * 4C. `scale`, `se_channels`, `attention_channels` shrink the
    model for CPU tests (the authors: 8, 128, 256).
    """

    def __init__(self, variant: str, channels: int, stop: int = 0, num_classes: int = 10,
                 last_channels: int = 1536, scale: int = 8, se_channels: int = 128, attention_channels: int = 256,
                 bands: Sequence[tuple[int, int]] = PAPER_BANDS, n_mels: int = 48,
                 frontend_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if variant not in ("vanilla", "ccs", "fsa"):
            raise ValueError(f"variant must be vanilla, ccs or fsa, got {variant!r}")
        self.variant, self.bands = variant, [tuple(b) for b in bands]
        self.torchfbank = nn.Sequential(MelSpectrogram(n_mels=n_mels, dtype=frontend_dtype))
        n_blocks = 3
        if variant == "vanilla":
            _add_extractor(self, n_mels, channels, 0, last_channels, scale, se_channels)
            pooled = last_channels
        elif variant == "ccs":
            last = 3 * (channels + stop) // 2
            self.mid_band_extractor = FeatureExtractor(n_mels, channels, stop, last, scale, se_channels,
                                                       subtract_mean=True)
            pooled = last + n_blocks * stop
        else:
            for i, (start, end) in enumerate(self.bands):
                setattr(self, f"band{i + 1}", FeatureExtractor(end - start, channels, stop, None, scale, se_channels))
            total = len(self.bands) * channels
            last = 3 * total // 2
            self.layer4 = SERes2Block(n_blocks * total, last, 1, 1, scale, se_channels)
            pooled = last + n_blocks * len(self.bands) * stop
        self.pooled_channels = pooled
        self.attention = nn.Sequential(nn.Conv1d(3 * pooled, attention_channels, 1), nn.ReLU(),
                                       nn.BatchNorm1d(attention_channels), nn.Tanh(),
                                       nn.Conv1d(attention_channels, pooled, 1), nn.Softmax(dim=2))
        self.bn5 = nn.BatchNorm1d(2 * pooled)
        self.fc6 = nn.Linear(2 * pooled, num_classes)
        self.bn6 = nn.BatchNorm1d(num_classes)

    def features(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel (batch, n_mels, frames) -> the frame-level channels that pooling sees."""
        if self.variant == "vanilla":
            continuous, _ = _run_extractor(self, mel)
            return F.relu(self.layer4(continuous))
        if self.variant == "ccs":
            continuous, stops = self.mid_band_extractor(mel)
            return torch.cat(stops + [F.relu(self.mid_band_extractor.layer4(continuous))], dim=1)
        outputs = [getattr(self, f"band{i + 1}")(mel[:, start:end]) for i, (start, end) in enumerate(self.bands)]
        h = self.layer4(torch.cat([c for c, _ in outputs], dim=1))
        return torch.cat([h] + [torch.cat(s, dim=1) for _, s in outputs if s], dim=1)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Attentive statistics pooling with global context: [weighted mean, weighted std]."""
        frames = x.shape[-1]
        mean = x.mean(dim=2, keepdim=True)
        std = torch.sqrt(torch.var(x, dim=2, keepdim=True).clamp(min=1e-4))  # unbiased variance
        w = self.attention(torch.cat([x, mean.expand(-1, -1, frames), std.expand(-1, -1, frames)], dim=1))
        mu = torch.sum(x * w, dim=2)
        sigma = torch.sqrt((torch.sum(x * x * w, dim=2) - mu * mu).clamp(min=1e-4))
        return torch.cat([mu, sigma], dim=1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform (batch, samples) -> logits (batch, classes)."""
        mel = log_mel(self.torchfbank, waveform, subtract_mean=self.variant != "ccs")
        return self.bn6(self.fc6(self.bn5(self.pool(self.features(mel)))))


def paper_model(experiment: int, num_classes: int = 10, **kwargs) -> ECAPAReference:
    """The authors' experiment #8, #12 or #15 at full size (kwargs: e.g. frontend_dtype)."""
    if experiment == 8:
        return ECAPAReference("vanilla", 1024, num_classes=num_classes, **kwargs)
    if experiment == 12:
        return ECAPAReference("ccs", 1024, 512, num_classes=num_classes, **kwargs)
    if experiment == 15:
        return ECAPAReference("fsa", 256, 128, num_classes=num_classes, **kwargs)
    raise ValueError(f"no reference for experiment #{experiment} (have 8, 12, 15)")


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine weights (in place).

    Fresh BatchNorms are the identity in eval mode (mean 0, variance 1, gamma 1, beta 0), so a
    converter that dropped or swapped them would go unseen; after this it cannot.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) * 1.0 + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                module.num_batches_tracked.fill_(7)
    return model


def reference_for(cfg, num_classes: int = 10, **kwargs) -> ECAPAReference:
    """The reference of a keras-mgc ECAPA config (keras_mgc.config.ECAPAConfig), any size.

    Imports neither TensorFlow nor Keras (the benchmark's PyTorch worker uses it).

    Raises ValueError for a config the authors' layouts cannot express (uneven bands, or a
    CCS/FSA last conv other than the authors' 1.5x rule).
    """
    channels, stops = cfg.band_channels(), cfg.band_stop()
    if len(set(channels)) > 1 or len(set(stops)) > 1:
        raise ValueError("the reference needs the same C and M in every band")
    common = dict(num_classes=num_classes, scale=cfg.res2_scale, se_channels=cfg.se_channels,
                  attention_channels=cfg.attention_channels, n_mels=cfg.frontend.n_mels, **kwargs)
    last = cfg.last_conv_channels()
    if cfg.fsa.enabled:
        if last != 3 * sum(channels) // 2:
            raise ValueError(f"the authors' FSA aggregation has 1.5 x sum(C) outputs, the config {last}")
        return ECAPAReference("fsa", channels[0], stops[0], bands=cfg.band_slices(), **common)
    if stops[0]:
        if last != 3 * (channels[0] + stops[0]) // 2:
            raise ValueError(f"the authors' CCS last conv has 1.5 x (C + M) outputs, the config {last}")
        return ECAPAReference("ccs", channels[0], stops[0], **common)
    return ECAPAReference("vanilla", channels[0], last_channels=last, **common)
