"""Named model configurations (presets), keras-hub style: one place for every system's numbers.

A preset is a model configuration (the keys of `keras_mgc.config.ECAPAConfig`, or of another
backbone's config) under a name. Recipes refer to one with ``model.preset: NAME``; keys
written beside it override the preset's::

    model:
      preset: paper_15_ccs_fsa_s512_c1024
      res2_scale: 4            # explicit keys win over the preset's

Python::

    >>> from keras_mgc import presets
    >>> presets.get("paper_15_ccs_fsa_s512_c1024").model
    {'backbone': 'ecapa_tdnn', 'channels': 1024, 'ccs': {'stop': 512}, 'fsa': {'enabled': True}}
    >>> presets.model_config("tiny", channels=16, ccs={"stop": 8}).channels
    16

Registered here: the paper's ECAPA-TDNN systems on GTZAN (#8-#15; #16 is #15 evaluated with
TTA, an evaluation choice, not a model) and on Melon Playlist (#22-#27, log-mel input), the
paper's baselines (ResNet18/34, SE-ResNet34: #5-#7 GTZAN, #18-#20 Melon; VGGNet #17, BBNN #21
Melon, and a GTZAN BBNN under #4), the quickstart's CPU-sized model, and ``tiny`` (plus
``tiny_resnet18``, ``tiny_resnet34``, ``tiny_se_resnet34``, ``tiny_vgg``, ``tiny_bbnn``), the
smallest models the tests train and export. The preset's ``backbone`` key names the
configuration class (`keras_mgc.config.MODEL_CONFIGS`).

`authors_params` is the parameter count of the authors' PyTorch model for `authors_classes`
classes (10 for GTZAN, 28 for the Melon baselines), which `python -m keras_mgc.models`
compares with this implementation's.

    >>> get("paper_17_vgg").authors_params, get("paper_17_vgg").authors_classes
    (39477980, 28)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

__all__ = ["Preset", "PresetError", "PRESETS", "register", "get", "names", "model_config", "resolve"]


class PresetError(ValueError):
    """An unknown preset name (the message lists the close and the known names)."""


@dataclass(frozen=True)
class Preset:
    """A named model configuration."""

    name: str
    model: dict[str, Any]  # configuration keys, as in a recipe's `model:` section
    description: str
    paper_ref: str | None = None  # the system's number in the paper's tables ("#15")
    authors_params: int | None = None  # the authors' PyTorch parameter count, for `authors_classes` classes
    authors_classes: int = 10  # GTZAN's 10, or Melon's 28 (the authors' Melon baselines)


#: Every preset by name, in registration order.
PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    """Add a preset (its name must be new); returns it."""
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} is already registered")
    PRESETS[preset.name] = preset
    return preset


def names() -> list[str]:
    """Registered preset names, in registration order."""
    return list(PRESETS)


def get(name: str) -> Preset:
    """The preset called `name`; PresetError naming the close matches otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), PRESETS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise PresetError(f"unknown preset {name!r}{hint} (known: {', '.join(PRESETS)})") from None


def resolve(model: dict[str, Any]) -> dict[str, Any]:
    """A recipe's `model:` mapping with its `preset` (if any) expanded under the explicit keys."""
    from keras_mgc.config import merge_sections

    name = model.get("preset")
    if name is None:
        return dict(model)
    return merge_sections(get(name).model, model)


def model_config(name: str, **overrides: Any) -> Any:
    """The validated model configuration of preset `name`, with `overrides` laid over it."""
    from keras_mgc.config import MODEL_CONFIGS

    merged = resolve({"preset": name, **overrides})
    return MODEL_CONFIGS[merged.get("backbone", "ecapa_tdnn")].model_validate(merged)


def _ecapa(channels: int, stop: int = 0, fsa: bool = False, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"backbone": "ecapa_tdnn", "channels": channels}
    if stop:
        cfg["ccs"] = {"stop": stop}
    if fsa:
        cfg["fsa"] = {"enabled": True}
    return {**cfg, **extra}


# The paper's GTZAN systems (Table 2): c = channels, s = CCS stop channels, totals over the
# 4 FSA sub-bands where FSA is on. Parameter counts: the authors' models, 10 classes.
_PAPER = [
    ("08", "ecapa", 1024, 0, False, 14_721_054),
    ("09", "ccs_s512_c512", 512, 512, False, 13_851_678),
    ("10", "ccs_s256_c768", 768, 256, False, 15_860_766),
    ("11", "ccs_s256_c1024", 1024, 256, False, 24_386_046),
    ("12", "ccs_s512_c1024", 1024, 512, False, 31_424_478),
    ("13", "ccs_fsa_s256_c768", 768, 256, True, 12_218_990),
    ("14", "ccs_fsa_s256_c1024", 1024, 256, True, 19_600_574),
    ("15", "ccs_fsa_s512_c1024", 1024, 512, True, 21_722_270),
]
for _num, _tag, _c, _s, _fsa, _params in _PAPER:
    _what = "ECAPA-TDNN" + (" + CCS" if _s else "") + (" + FSA" if _fsa else "")
    _size = f"s={_s} c={_c}" if _s else f"C={_c}"
    register(Preset(f"paper_{_num}_{_tag}", _ecapa(_c, _s, _fsa), f"#{int(_num)} {_what} {_size} (GTZAN)",
                    paper_ref=f"#{int(_num)}", authors_params=_params))

# The paper's Melon Playlist systems (Table 3): the same architectures over Melon's 48-bin
# log-mels (model.input: mel).
_MELON = [("22", "ecapa", 1024, 0, False), ("23", "ccs_s512_c512", 512, 512, False),
          ("24", "ccs_s256_c768", 768, 256, False), ("25", "ccs_s256_c1024", 1024, 256, False),
          ("26", "ccs_fsa_s256_c768", 768, 256, True), ("27", "ccs_fsa_s256_c1024", 1024, 256, True)]
for _num, _tag, _c, _s, _fsa in _MELON:
    _what = "ECAPA-TDNN" + (" + CCS" if _s else "") + (" + FSA" if _fsa else "")
    _size = f"s={_s} c={_c}" if _s else f"C={_c}"
    register(Preset(f"paper_{_num}_{_tag}", _ecapa(_c, _s, _fsa, input="mel"),
                    f"#{_num} {_what} {_size} on log-mels (Melon Playlist)", paper_ref=f"#{_num}"))

register(Preset("quickstart", _ecapa(64, 32, True, res2_scale=4, se_channels=16, attention_channels=32),
                "CPU-sized ECAPA-TDNN + CCS + FSA (c=64, s=32 over 4 sub-bands): the quickstart's model"))
register(Preset("tiny", _ecapa(32, 16, False, res2_scale=2, se_channels=8, attention_channels=16),
                "the smallest CCS ECAPA the tests train and export (c=32, s=16, Res2Net scale 2): "
                "tracing it takes seconds on 2 cores"))

# The paper's conventional baselines (Tables 2 and 3), the authors' experiments #05-#07 and
# #17-#21 (keras_mgc/models/resnet.py, vgg.py, bbnn.py; BUILD_NOTES.md "Baselines").
# Parameter counts: the authors' models, for the classes of their table (GTZAN 10, Melon 28).
_BASELINES = [
    ("05", "resnet18", "resnet18", "ResNet18", False, 11_179_658),
    ("06", "resnet34", "resnet34", "ResNet34", False, 21_287_818),
    ("07", "se_resnet34", "se_resnet34", "SE-ResNet34", False, 21_606_434),
    ("17", "vgg", "vgg", "VGGNet (VGG16-C), 200 frames", True, 39_477_980),
    ("18", "resnet18", "resnet18", "ResNet18", True, 11_188_892),
    ("19", "resnet34", "resnet34", "ResNet34", True, 21_297_052),
    ("20", "se_resnet34", "se_resnet34", "SE-ResNet34", True, 21_615_668),
    ("21", "bbnn", "bbnn", "BBNN (Liu et al.), the mels as they are", True, 32_450),
]
for _num, _tag, _backbone, _what, _melon, _params in _BASELINES:
    register(Preset(f"paper_{_num}_{_tag}", {"backbone": _backbone, **({"input": "mel"} if _melon else {})},
                    f"#{int(_num)} {_what} " + ("on log-mels (Melon Playlist)" if _melon else "(GTZAN)"),
                    paper_ref=f"#{int(_num)}", authors_params=_params, authors_classes=28 if _melon else 10))
register(Preset("paper_04_bbnn", {"backbone": "bbnn", "instance_norm": True},
                "BBNN (Liu et al.) on GTZAN audio with the GTZAN ResNets' input (log-mel + instance norm); "
                "#4 is Liu et al.'s own result", paper_ref="#4"))

# Reduced-width versions of each baseline: the same code paths in a few thousand parameters,
# for the tests' training, round-trip and export runs.
register(Preset("tiny_resnet18", {"backbone": "resnet18", "stage_channels": [4, 8, 8, 8]},
                "ResNet18 at widths 4/8/8/8 (tests)"))
register(Preset("tiny_resnet34", {"backbone": "resnet34", "stage_channels": [4, 4, 4, 4]},
                "ResNet34 at width 4 (tests)"))
register(Preset("tiny_se_resnet34", {"backbone": "se_resnet34", "stage_channels": [8, 8, 8, 8], "blocks": [1, 1, 1, 1]},
                "SE-ResNet with one SE block per stage at width 8 (tests)"))
register(Preset("tiny_vgg", {"backbone": "vgg", "frames": 32, "block_channels": [4, 4, 8, 8, 8], "dense_units": 16},
                "VGG16-C at widths 4-8, dense 16, built for 32 frames (31 x 256 = 7,936 samples) (tests)"))
register(Preset("tiny_bbnn", {"backbone": "bbnn", "channels": 4, "dense_layers": 2},
                "BBNN with C = 4 and two multi-scale blocks (tests)"))
