"""Recipe schema: every key a recipe may hold, its type, default and meaning.

A recipe is a YAML file validated here before anything runs (pydantic, with unknown
keys forbidden), so a typo or a wrong type stops the run with one message naming the
key path. Command-line overrides (`--set train.epochs=2 model.ccs.stop=512`) are
applied to the raw document before validation, so they are checked the same way.

The paper's naming carries over: `model.channels` is the paper's "c" and
`model.ccs.stop` its "s", both totals over the frequency sub-bands when FSA is on.

This module does not import TensorFlow.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, field_validator,
                      model_validator)

from keras_mgc.contract import DEFAULT_CROP_SAMPLES, DEFAULT_SAMPLE_RATE, HOP_LENGTH
from keras_mgc.windows import seconds_to_samples

__all__ = ["PositiveInt", "NonNegativeInt", "PositiveFloat", "PAPER_BANDS", "RecipeError", "FrontendConfig", "CCSConfig",
           "FSAConfig", "ModelConfigBase", "ECAPAConfig", "ModelConfig", "MODEL_CONFIGS", "DataConfig",
           "OptimizerConfig", "ScheduleConfig", "TrainConfig", "EvalConfig", "Recipe", "apply_overrides",
           "parse_recipe", "merge_sections", "read_recipe_document", "load_recipe", "recipe_to_dict"]

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]

#: The paper's four overlapping 18-bin sub-bands of the 48 mel bins (stride 10).
PAPER_BANDS: list[list[int]] = [[0, 18], [10, 28], [20, 38], [30, 48]]


class RecipeError(ValueError):
    """A recipe (or an override) that cannot be used; the message names the key path."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- model


class FrontendConfig(_Section):
    """Log-mel front end (torchaudio MelSpectrogram defaults, as the authors use it)."""

    sample_rate: PositiveInt = DEFAULT_SAMPLE_RATE
    n_fft: PositiveInt = 2048
    win_length: PositiveInt = 512
    hop_length: PositiveInt = HOP_LENGTH
    n_mels: PositiveInt = 48
    f_min: Annotated[float, Field(ge=0)] = 0.0
    f_max: float | None = None  # None: sample_rate / 2
    log_offset: PositiveFloat = 1e-6
    mean_normalize: bool = True

    @model_validator(mode="after")
    def _check(self) -> "FrontendConfig":
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length: {self.win_length} must be <= n_fft ({self.n_fft})")
        if self.win_length != 2 * self.hop_length:
            raise ValueError(
                f"win_length: {self.win_length} must be 2 * hop_length ({self.hop_length}): "
                "the matmul DFT front end frames the signal in half-window blocks"
            )
        f_max = self.f_max if self.f_max is not None else self.sample_rate / 2
        if not self.f_min < f_max <= self.sample_rate / 2:
            raise ValueError(f"f_max: need 0 <= f_min < f_max <= sample_rate/2, got f_min={self.f_min}, f_max={f_max}")
        return self


class CCSConfig(_Section):
    """Convolution channel separation: `stop` is the paper's s (0 switches CCS off)."""

    stop: NonNegativeInt | list[NonNegativeInt] = 0


class FSAConfig(_Section):
    """Frequency sub-band aggregation: each band gets its own feature extractor."""

    enabled: bool = False
    bands: list[list[NonNegativeInt]] = Field(default_factory=lambda: copy.deepcopy(PAPER_BANDS))

    @field_validator("bands")
    @classmethod
    def _check_bands(cls, bands: list[list[int]]) -> list[list[int]]:
        if not bands:
            raise ValueError("at least one band is needed")
        for band in bands:
            if len(band) != 2 or band[0] >= band[1]:
                raise ValueError(f"each band is [start, end) with start < end, got {band}")
        return bands


class ModelConfigBase(_Section):
    """Keys every backbone shares: preset, input kind, front end, head.

    `preset` names a configuration in `keras_mgc.presets`; the keys written beside it
    override the preset's (the merged result is what gets validated and recorded).
    """

    #: The head: BN -> Linear -> BN (the authors' ECAPA) or one Linear layer (their baselines).
    head_batchnorm: ClassVar[bool] = True

    preset: str | None = None
    input: Literal["waveform", "mel"] = "waveform"

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") is not None:
            from keras_mgc import presets

            if not isinstance(data["preset"], str):
                raise ValueError(f"preset: expected a preset name, got {data['preset']!r}")
            try:
                return presets.resolve(data)
            except presets.PresetError as exc:
                raise ValueError(f"preset: {exc}") from None
        return data
    frontend: FrontendConfig = Field(default_factory=FrontendConfig)
    sync_batchnorm: bool = False

    def fixed_frames(self) -> int | None:
        """The number of mel frames the model is built for, or None when any length works."""
        return None

    def fixed_samples(self) -> int | None:
        """Samples of audio the model is built for (its waveform input), or None when any length works.

        A clip of N samples gives 1 + N // hop_length frames, so a fixed-frame model takes
        (frames - 1) x hop_length samples of audio.
        """
        frames = self.fixed_frames()
        return None if frames is None else (frames - 1) * self.frontend.hop_length

    def fixed_input_length(self) -> int | None:
        """Samples (waveform input) or frames (mel input) the model takes, or None when any length works."""
        return self.fixed_frames() if self.input == "mel" else self.fixed_samples()


class ECAPAConfig(ModelConfigBase):
    """ECAPA-TDNN, optionally with CCS and FSA (channel counts: BUILD_NOTES.md, "Model")."""

    backbone: Literal["ecapa_tdnn"] = "ecapa_tdnn"
    channels: PositiveInt | list[PositiveInt] = 1024
    ccs: CCSConfig = Field(default_factory=CCSConfig)
    fsa: FSAConfig = Field(default_factory=FSAConfig)
    first_kernel_size: PositiveInt = 5
    kernel_size: PositiveInt = 3
    dilations: list[PositiveInt] = Field(default_factory=lambda: [2, 3, 4])
    res2_scale: PositiveInt = 8
    se_channels: PositiveInt = 128
    attention_channels: PositiveInt = 256
    last_channels: PositiveInt | None = None  # None: the authors' rule (BUILD_NOTES.md)

    @model_validator(mode="after")
    def _check(self) -> "ECAPAConfig":
        bands = self.band_slices()
        n_mels = self.frontend.n_mels
        for start, end in bands:
            if end > n_mels:
                raise ValueError(f"fsa.bands: band [{start}, {end}) exceeds n_mels={n_mels}")
        for c, m in zip(self.band_channels(), self.band_stop()):
            if (c + m) % self.res2_scale:
                raise ValueError(
                    f"channels: block width C + M = {c + m} per band must be divisible by res2_scale={self.res2_scale}"
                )
        return self

    # The helpers below turn the paper's totals into per-band numbers.
    def band_slices(self) -> list[tuple[int, int]]:
        if self.fsa.enabled:
            return [(b[0], b[1]) for b in self.fsa.bands]
        return [(0, self.frontend.n_mels)]

    def _per_band(self, value: int | list[int], key: str) -> list[int]:
        n = len(self.band_slices())
        if isinstance(value, list):
            if len(value) != n:
                raise ValueError(f"{key}: a list needs one value per band ({n}), got {len(value)}")
            return list(value)
        if value % n:
            raise ValueError(f"{key}: {value} is a total over {n} bands and must be divisible by {n}")
        return [value // n] * n

    def band_channels(self) -> list[int]:
        """C per band (continuous channels)."""
        return self._per_band(self.channels, "channels")

    def band_stop(self) -> list[int]:
        """M per band (stop channels, 0 without CCS)."""
        return self._per_band(self.ccs.stop, "ccs.stop")

    def last_conv_channels(self) -> int:
        """Outputs of the last conv: `last_channels`, else the authors' 1.5 x (C + M) without FSA,
        1.5 x sum(C) with it (BUILD_NOTES.md, "Last layer before pooling")."""
        if self.last_channels is not None:
            return self.last_channels
        if self.fsa.enabled:
            return 3 * sum(self.band_channels()) // 2
        return 3 * (self.band_channels()[0] + self.band_stop()[0]) // 2


def _without_mean_normalize() -> FrontendConfig:
    return FrontendConfig(mean_normalize=False)


class _ImageBackboneConfig(ModelConfigBase):
    """Keys of the image baselines: they normalise the log-mel themselves (or not at all)."""

    head_batchnorm: ClassVar[bool] = False

    # The front end stops at log(mel + 1e-6); the backbone's instance norm does the rest.
    frontend: FrontendConfig = Field(default_factory=_without_mean_normalize)
    instance_norm: bool = True  # per-bin mean and variance over time (nn.InstanceNorm1d)


class ResNetConfig(_ImageBackboneConfig):
    """ResNet18 / ResNet34 / SE-ResNet34 on the (mel, time) image: the authors' #5-#7 and #18-#20."""

    #: Basic blocks per stage of each named network.
    DEPTHS: ClassVar[dict[str, list[int]]] = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3],
                                              "se_resnet34": [3, 4, 6, 3]}

    backbone: Literal["resnet18", "resnet34", "se_resnet34"]
    stage_channels: list[PositiveInt] = Field(default_factory=lambda: [64, 128, 256, 512])
    blocks: list[PositiveInt] | None = None  # None: the network's own depths (DEPTHS)
    stage_stride: PositiveInt = 2  # the authors stride every stage, the first included
    se_reduction: PositiveInt | None = None  # se_resnet34 only; None: 8, the authors' reduction

    @model_validator(mode="after")
    def _check(self) -> "ResNetConfig":
        if len(self.stage_blocks()) != len(self.stage_channels):
            key = "blocks" if self.blocks is not None else "stage_channels"
            raise ValueError(f"{key}: {len(self.stage_channels)} stage widths but {len(self.stage_blocks())} block "
                             "counts (set blocks to one count per stage)")
        if self.se_reduction is not None and not self.backbone.startswith("se_"):
            raise ValueError(f"se_reduction: backbone '{self.backbone}' has no squeeze-excitation (se_resnet34 has)")
        return self

    def stage_blocks(self) -> list[int]:
        return list(self.blocks) if self.blocks is not None else self.DEPTHS[self.backbone]

    def squeeze_excitation(self) -> int | None:
        """The SE reduction of each block (None: no SE blocks)."""
        if not self.backbone.startswith("se_"):
            return None
        return self.se_reduction or 8


class VGGConfig(_ImageBackboneConfig):
    """VGGNet (VGG16 configuration C) on the (mel, time) image: the authors' #17.

    Its first dense layer fixes the input length: `frames` (the authors crop 200).
    """

    backbone: Literal["vgg"] = "vgg"
    frames: PositiveInt = 200
    block_channels: list[PositiveInt] = Field(default_factory=lambda: [64, 128, 256, 512, 512])
    dense_units: PositiveInt = 4096
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5

    @model_validator(mode="after")
    def _check(self) -> "VGGConfig":
        need = 2 ** len(self.block_channels)
        if self.frames < need:
            raise ValueError(f"frames: {self.frames} vanish after {len(self.block_channels)} 2x2 pools (need >= {need})")
        if self.frontend.n_mels < need:
            raise ValueError(f"frontend.n_mels: {self.frontend.n_mels} bins vanish after "
                             f"{len(self.block_channels)} 2x2 pools (need >= {need})")
        return self

    def fixed_frames(self) -> int | None:
        return self.frames


class BBNNConfig(_ImageBackboneConfig):
    """BBNN (Liu et al.): the authors' #21. Their Melon model uses the mels as they are (no normalisation)."""

    backbone: Literal["bbnn"] = "bbnn"
    instance_norm: bool = False
    channels: PositiveInt = 13  # C: the stem's width, each branch's width and the transition's output
    dense_layers: PositiveInt = 3  # multi-scale blocks in the densely connected block
    time_pool: PositiveInt = 4  # the stem's max pool over time (1, 4)


#: Backbone configurations by `model.backbone` name; a builder per name is in keras_mgc.models.
MODEL_CONFIGS: dict[str, type[ModelConfigBase]] = {
    "ecapa_tdnn": ECAPAConfig, "resnet18": ResNetConfig, "resnet34": ResNetConfig, "se_resnet34": ResNetConfig,
    "vgg": VGGConfig, "bbnn": BBNNConfig,
}


def _backbone_tag(value: Any) -> str:
    """The config class of a `model:` mapping: its `backbone`, else its preset's, else ECAPA-TDNN."""
    if not isinstance(value, dict):
        name = getattr(value, "backbone", None)
    elif "backbone" in value:
        name = value["backbone"]
    else:
        name = "ecapa_tdnn"
        if isinstance(value.get("preset"), str):
            from keras_mgc import presets

            if value["preset"] in presets.PRESETS:  # an unknown name is reported by the preset expansion
                name = presets.get(value["preset"]).model.get("backbone", "ecapa_tdnn")
    return name if isinstance(name, str) else ""


#: `model:` of a recipe: the config class is chosen by `backbone` (ECAPA-TDNN when absent).
ModelConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in MODEL_CONFIGS.items())],
    Discriminator(_backbone_tag, custom_error_type="unknown_backbone",
                  custom_error_message=f"backbone: unknown backbone (known: {', '.join(sorted(MODEL_CONFIGS))})"),
]
_MODEL_ADAPTER: TypeAdapter = TypeAdapter(ModelConfig)


def model_config_from_dict(document: dict[str, Any] | ModelConfigBase) -> ModelConfigBase:
    """A recipe's `model:` mapping validated into its backbone's config class (pydantic errors as raised)."""
    if isinstance(document, ModelConfigBase):
        return document
    return _MODEL_ADAPTER.validate_python(document)


# --------------------------------------------------------------------------- data


class DataConfig(_Section):
    """Where the clips come from, how they are split and cropped."""

    dataset: Literal["synthetic", "folder", "gtzan", "melon"] = "gtzan"
    root: str | None = None  # dataset folder; `--data-dir` sets it
    split: Literal["paper_10fold", "fault_filtered", "kfold", "lists"] = "paper_10fold"
    split_dir: str | None = None  # for split: lists (fold*.txt or train/valid/test.txt)
    n_folds: Annotated[int, Field(ge=2)] = 10  # for split: kfold
    folds: list[PositiveInt] | Literal["all"] = "all"  # which folds to run
    allow_missing: bool = False
    max_skip_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    cache: Literal["memory", "disk", "none"] = "memory"
    cache_dir: str | None = None
    # The training/TTA crop, in samples at the model's rate (model.frontend.sample_rate), or
    # in seconds (crop_seconds, a whole number of samples at that rate; crop_samples then
    # follows from it). 44,356 is the paper's 2.01 s at 22,050 Hz.
    crop_samples: PositiveInt = DEFAULT_CROP_SAMPLES
    crop_seconds: PositiveFloat | None = None
    # The rate and hop the dataset's own mel files were computed with (model.input: mel,
    # i.e. Melon): the model's front end must match them, so that the exported waveform
    # entry point computes the features it was trained on. Melon's files do not say; the
    # project assumes the GTZAN front end's 22,050 Hz and hop 256 (BUILD_NOTES.md).
    mel_sample_rate: PositiveInt = DEFAULT_SAMPLE_RATE
    mel_hop_length: PositiveInt = HOP_LENGTH
    data_cycle: PositiveInt = 8
    synthetic_clips_per_class: PositiveInt = 12  # for dataset: synthetic
    synthetic_seconds: PositiveFloat = 6.0
    # A folder written by `python -m keras_mgc.data.shard`: training then reads its TFRecord
    # shards with tf.data (split, classes and clips all come from its manifest.json).
    shards: str | None = None
    shuffle_buffer: NonNegativeInt = 1024  # records; for data.shards (0 or 1: no record shuffle)
    interleave_cycle: PositiveInt = 16  # shard files read at once per input pipeline, for data.shards

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.dataset != "synthetic" and self.root is None and self.shards is None:
            raise ValueError(f"root: dataset '{self.dataset}' needs a data folder (data.root or --data-dir)")
        if self.split == "lists" and self.split_dir is None:
            raise ValueError("split_dir: split 'lists' needs a folder of split lists")
        for key in ("root", "split_dir", "shards"):
            value = getattr(self, key)
            if value is None:
                continue
            try:
                exists = Path(value).exists()
            except (OSError, ValueError) as exc:  # e.g. a name too long, a NUL byte
                raise ValueError(f"{key}: not a usable path ({exc.__class__.__name__}: {exc})") from None
            if not exists:
                raise ValueError(f"{key}: path does not exist: {value}")
        if self.shards is not None and not (Path(self.shards) / "manifest.json").is_file():
            raise ValueError(f"shards: {self.shards} holds no manifest.json (write it with python -m keras_mgc.data.shard)")
        return self


# --------------------------------------------------------------------------- training


class OptimizerConfig(_Section):
    """The optimiser (keras_mgc.optimizers): `adam_l2` is the authors' torch.optim.Adam(weight_decay=...).

    adam_l2: coupled L2 (decay added to the gradient before Adam's moments), as torch.optim.Adam;
    adamw: Keras AdamW (decoupled decay), NOT the authors' optimiser; adam: no decay.
    """

    name: Literal["adam_l2", "adamw", "adam"] = "adam_l2"
    learning_rate: PositiveFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-5

    @model_validator(mode="after")
    def _check(self) -> "OptimizerConfig":
        if self.name == "adam" and self.weight_decay:
            raise ValueError(f"weight_decay: {self.weight_decay:g} is set but optimizer 'adam' has no weight decay; "
                             "use adam_l2 (the authors' coupled L2), adamw (decoupled) or weight_decay: 0")
        return self


class ScheduleConfig(_Section):
    """Cosine annealing per epoch to `min_learning_rate`; SGDR restarts when `restart_period` is set.

    `step` multiplies the rate by `gamma` every `step_size` epochs (torch StepLR, the authors'
    Melon baselines).
    """

    name: Literal["cosine", "constant", "step"] = "cosine"
    min_learning_rate: Annotated[float, Field(ge=0)] = 1e-6
    restart_period: PositiveInt | None = None  # epochs of the first SGDR cycle (T_0)
    restart_mult: PositiveInt = 1  # T_mult
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.95  # for name: step
    step_size: PositiveInt = 1  # for name: step


class TrainConfig(_Section):
    epochs: PositiveInt = 80
    batch_size: PositiveInt = 64
    steps_per_epoch: PositiveInt | None = None  # None: data_cycle passes over the train set
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "auto"
    distribute: Literal["auto", "none", "mirrored", "multi_worker"] = "auto"
    deterministic: bool = True
    # Which weights the test metrics use: best.keras, the epoch with the best validation
    # accuracy (ties: lower validation loss) or loss (ties: higher accuracy), or "last":
    # last.keras, the final epoch (best.keras is kept beside it either way).
    monitor: Literal["val_accuracy", "val_loss", "last"] = "val_accuracy"
    nan_policy: Literal["stop"] = "stop"
    verbose: Literal[0, 1, 2] = 1

    @property
    def evaluated_checkpoint(self) -> str:
        """The file name, in each fold folder, of the weights the test metrics use."""
        return "last.keras" if self.monitor == "last" else "best.keras"

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        lr, floor = self.optimizer.learning_rate, self.schedule.min_learning_rate
        if self.schedule.name == "cosine" and floor > lr:
            raise ValueError(f"schedule.min_learning_rate: {floor:g} is above optimizer.learning_rate ({lr:g}); "
                             "cosine annealing decays from the latter down to the former")
        return self


class EvalConfig(_Section):
    """Test-time evaluation: whole clip in one pass and/or the paper's TTA."""

    modes: list[Literal["whole", "tta"]] = Field(default_factory=lambda: ["whole", "tta"])
    tta_crops: PositiveInt = 16
    headline: Literal["whole", "tta"] = "whole"

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        if not self.modes:
            raise ValueError("modes: needs at least one of 'whole', 'tta'")
        if self.headline not in self.modes:
            raise ValueError(f"headline: '{self.headline}' must be one of modes {self.modes}")
        return self


class Recipe(_Section):
    """A whole experiment: one published system on one dataset protocol."""

    name: str
    description: str = ""
    paper_ref: str | None = None  # e.g. "#15 (Table 2)"
    paper_accuracy: Annotated[float, Field(ge=0, le=100)] | None = None  # published accuracy, %
    seed: int = 3823
    output_dir: str = "runs"
    data: DataConfig
    model: ModelConfig = Field(default_factory=ECAPAConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _crop_from_seconds(self) -> "Recipe":
        """data.crop_seconds as data.crop_samples at the model's rate (one sample rate from data to device).

        Defined before _check_fixed_length: pydantic runs after-validators in definition order,
        and a fixed-length model (VGG) checks the crop that crop_seconds gives, not the default.
        """
        rate = self.model.frontend.sample_rate
        data = self.data
        if data.crop_seconds is not None:
            try:
                samples = seconds_to_samples(data.crop_seconds, rate)
            except ValueError as exc:
                raise ValueError(f"data.crop_seconds: {exc} (model.frontend.sample_rate); give a duration that is, "
                                 f"or data.crop_samples (e.g. {round(data.crop_seconds * rate)})") from None
            if "crop_samples" in data.model_fields_set and data.crop_samples != samples:
                raise ValueError(f"data.crop_samples: {data.crop_samples} disagrees with data.crop_seconds="
                                 f"{data.crop_seconds:g} ({samples} samples at {rate} Hz); give one of them")
            data.crop_samples = samples
        return self

    @model_validator(mode="after")
    def _check_fixed_length(self) -> "Recipe":
        frames = self.model.fixed_frames()
        if frames is not None:
            hop = self.model.frontend.hop_length
            need = self.model.fixed_samples()
            if self.data.crop_samples != need:
                raise ValueError(
                    f"data.crop_samples: model.backbone '{self.model.backbone}' is built for exactly {frames} frames "
                    f"(model.frames), so the crop must be {need} samples ({frames} - 1 hops of {hop}); "
                    f"got {self.data.crop_samples}")
        return self

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @model_validator(mode="after")
    def _check_rate(self) -> "Recipe":
        """One sample rate from data to device: mel files must agree with the model's (crops: _crop_from_seconds)."""
        rate, hop = self.model.frontend.sample_rate, self.model.frontend.hop_length
        data = self.data
        if self.model.input == "mel":
            if (data.mel_sample_rate, data.mel_hop_length) != (rate, hop):
                raise ValueError(
                    f"model.frontend.sample_rate: the dataset's mel files were computed at {data.mel_sample_rate} Hz "
                    f"with hop {data.mel_hop_length} (data.mel_sample_rate, data.mel_hop_length) but the model's front "
                    f"end is {rate} Hz with hop {hop}; the exported model would compute other features than it was "
                    "trained on")
        return self


# --------------------------------------------------------------------------- loading


_UNION_TAG = re.compile(r"^(constrained-|list\[|dict\[|int$|float$|str$|bool$|none$|literal\[|function-)")
_KEYED_MSG = re.compile(r"^([a-z_][a-z0-9_.]*): (.*)$", re.S)


def _format_errors(error: ValidationError, source: str) -> str:
    """One line per bad key: `key.path: what is wrong (got value)`; union branches merged."""
    lines: dict[str, list[str]] = {}
    for item in error.errors():
        loc = _without_backbone_tag(item["loc"])
        parts = [str(p) for p in loc if not _UNION_TAG.match(str(p))]
        if item["type"] == "extra_forbidden":
            # The last element is the unknown key itself, whatever its name ("none", "int").
            parts = [str(p) for p in loc[:-1] if not _UNION_TAG.match(str(p))] + [str(loc[-1])]
            parent = _model_at(Recipe, tuple(item["loc"][:-1]))
            allowed = sorted(parent.model_fields) if parent is not None else []
            close = difflib.get_close_matches(parts[-1], allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            lines.setdefault(".".join(parts), []).append(f"unknown key{hint} (allowed here: {', '.join(allowed)})")
            continue
        msg = item["msg"].removeprefix("Value error, ")
        keyed = _KEYED_MSG.match(msg)
        if keyed:  # a section validator naming its own key: "root: path does not exist"
            parts, msg = parts + [keyed.group(1)], keyed.group(2)
        got = item.get("input")
        shown = "" if isinstance(got, dict) or got is None or keyed else f" (got {got!r})"
        text = f"{msg}{shown}"
        bucket = lines.setdefault(".".join(parts) or "recipe", [])
        if text not in bucket:
            bucket.append(text)
    body = "\n  ".join(f"{key}: {' or '.join(msgs)}" for key, msgs in lines.items())
    return f"invalid recipe {source}:\n  {body}"


def _without_backbone_tag(loc: tuple) -> tuple:
    """An error location without the union tag pydantic puts after `model` ("model.vgg.frames" -> "model.frames")."""
    return tuple(p for i, p in enumerate(loc) if not (i > 0 and loc[i - 1] == "model" and p in MODEL_CONFIGS))


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The section class at an error location (with its backbone tag, which picks the model config class)."""
    parts = list(loc)
    while parts:
        part = str(parts.pop(0))
        if model is Recipe and part == "model":
            tag = str(parts.pop(0)) if parts and parts[0] in MODEL_CONFIGS else "ecapa_tdnn"
            model = MODEL_CONFIGS[tag]
            continue
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def apply_overrides(document: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `document` with `a.b.c=value` overrides set (values parsed as YAML)."""
    document = copy.deepcopy(document)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override '{item}': expected KEY.PATH=VALUE, e.g. train.epochs=2")
        parts = key.strip().split(".")
        node = document
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override '{item}': {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise RecipeError(f"override '{item}': value is not valid YAML: {exc}") from None
    return document


def parse_recipe(document: Any, source: str = "<recipe>", overrides: list[str] | None = None) -> Recipe:
    """Validate a recipe document (a dict from YAML) with optional overrides."""
    if not isinstance(document, dict):
        raise RecipeError(f"invalid recipe {source}: the top level must be a mapping of keys, got {type(document).__name__}")
    document = apply_overrides(document, overrides or [])
    try:
        return Recipe.model_validate(document)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, source)) from None


def merge_sections(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` laid over it, sections merged key by key (recipe `extends`, presets)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = merge_sections(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_recipe_document(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw recipe mapping of a YAML file, with `extends: other.yaml` (relative to it) resolved."""
    path = Path(path)
    if path.resolve() in _seen:
        raise RecipeError(f"recipe {path}: 'extends' forms a cycle ({' -> '.join(str(p) for p in _seen)})")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe file {path} cannot be read: {exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe file {path} is not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise RecipeError(f"invalid recipe {path}: the top level must be a mapping of keys, got {type(document).__name__}")
    parent = document.pop("extends", None)
    if parent is None:
        return document
    if not isinstance(parent, str):
        raise RecipeError(f"invalid recipe {path}: extends: expected a file name, got {parent!r}")
    base = read_recipe_document(path.parent / parent, _seen + (path.resolve(),))
    return merge_sections(base, document)


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a YAML recipe file (following `extends`), with `KEY=VALUE` overrides."""
    return parse_recipe(read_recipe_document(path), str(path), overrides)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain-JSON form of a validated recipe, with every default filled in."""
    return recipe.model_dump(mode="json")
