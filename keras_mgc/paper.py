"""The paper's published results: one row per system of Table 2 (GTZAN) and Table 3 (Melon).

Heo et al., "Convolution Channel Separation and Frequency Sub-bands Aggregation for Music
Genre Classification" (DESIGN.md, "Published results"). This is the one place that holds
the published accuracies and the protocol behind each: `python -m keras_mgc.models` prints
them beside each system's size and `python -m keras_mgc.report` beside measured runs.
The model of each row is the preset named in `preset` (keras_mgc.presets).

This module does not import TensorFlow.

Example:
    >>> ROWS["#15"].accuracy, ROWS["#15"].dataset, ROWS["#16"].eval_mode
    (90.2, 'gtzan', 'tta')
    >>> [r.ref for r in rows("melon")][:3]
    ['#17', '#18', '#19']
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    """One published system: its number, what it is, its accuracy and how it was measured."""

    ref: str  # "#15": the system's number in the paper's tables
    system: str  # as the paper names it
    dataset: str  # "gtzan" or "melon" (the recipe's data.dataset)
    accuracy: float  # published test accuracy, %
    preset: str | None  # keras_mgc.presets name of its model (None: not an architecture of this toolkit)
    eval_mode: str = "whole"  # "whole" clip or 16-crop "tta"
    note: str = ""

    @property
    def table(self) -> str:
        return "Table 2 (GTZAN)" if self.dataset == "gtzan" else "Table 3 (Melon Playlist)"

    @property
    def number(self) -> int:
        return int(self.ref.lstrip("#"))


#: What the paper's numbers were measured on, per dataset (the protocol a run must match).
PAPER_PROTOCOL: dict[str, dict] = {
    "gtzan": {"split": "paper_10fold", "folds": list(range(1, 11)), "tracks": 1000,
              "text": "the authors' 10 folds (test k, valid k+1, train the other 8), mean over the 10 test folds"},
    "melon": {"split": "lists", "folds": None, "tracks": None,
              "text": "the authors' own 490,234 / 61,270 / 61,270 song split (not published)"},
}

_ROWS = [
    PaperRow("#4", "BBNN (Liu et al.)", "gtzan", 93.9, "paper_04_bbnn",
             note="Liu et al.'s own number with their own protocol, quoted by the paper; not trained by its authors"),
    PaperRow("#5", "ResNet18", "gtzan", 85.7, "paper_05_resnet18"),
    PaperRow("#6", "ResNet34", "gtzan", 86.3, "paper_06_resnet34"),
    PaperRow("#7", "SE-ResNet34", "gtzan", 85.3, "paper_07_se_resnet34"),
    PaperRow("#8", "ECAPA-TDNN C=1024", "gtzan", 87.9, "paper_08_ecapa"),
    PaperRow("#9", "ECAPA-TDNN + CCS s=512 c=512", "gtzan", 87.9, "paper_09_ccs_s512_c512"),
    PaperRow("#10", "ECAPA-TDNN + CCS s=256 c=768", "gtzan", 88.2, "paper_10_ccs_s256_c768"),
    PaperRow("#11", "ECAPA-TDNN + CCS s=256 c=1024", "gtzan", 88.6, "paper_11_ccs_s256_c1024"),
    PaperRow("#12", "ECAPA-TDNN + CCS s=512 c=1024", "gtzan", 88.6, "paper_12_ccs_s512_c1024"),
    PaperRow("#13", "ECAPA-TDNN + CCS + FSA s=256 c=768", "gtzan", 89.5, "paper_13_ccs_fsa_s256_c768"),
    PaperRow("#14", "ECAPA-TDNN + CCS + FSA s=256 c=1024", "gtzan", 89.7, "paper_14_ccs_fsa_s256_c1024"),
    PaperRow("#15", "ECAPA-TDNN + CCS + FSA s=512 c=1024", "gtzan", 90.2, "paper_15_ccs_fsa_s512_c1024"),
    PaperRow("#16", "ECAPA-TDNN + CCS + FSA s=512 c=1024 + TTA", "gtzan", 91.1, "paper_15_ccs_fsa_s512_c1024",
             eval_mode="tta"),
    PaperRow("#17", "VGGNet", "melon", 45.3, "paper_17_vgg", eval_mode="tta",
             note="the authors average 5 segments of 200 frames per song (their num_seg), i.e. 5-crop TTA"),
    PaperRow("#18", "ResNet18", "melon", 63.6, "paper_18_resnet18"),
    PaperRow("#19", "ResNet34", "melon", 63.6, "paper_19_resnet34"),
    PaperRow("#20", "SE-ResNet34", "melon", 64.1, "paper_20_se_resnet34"),
    PaperRow("#21", "BBNN", "melon", 60.2, "paper_21_bbnn"),
    PaperRow("#22", "ECAPA-TDNN C=1024", "melon", 68.8, "paper_22_ecapa"),
    PaperRow("#23", "ECAPA-TDNN + CCS s=512 c=512", "melon", 69.5, "paper_23_ccs_s512_c512"),
    PaperRow("#24", "ECAPA-TDNN + CCS s=256 c=768", "melon", 69.6, "paper_24_ccs_s256_c768"),
    PaperRow("#25", "ECAPA-TDNN + CCS s=256 c=1024", "melon", 69.2, "paper_25_ccs_s256_c1024"),
    PaperRow("#26", "ECAPA-TDNN + CCS + FSA s=256 c=768", "melon", 70.4, "paper_26_ccs_fsa_s256_c768"),
    PaperRow("#27", "ECAPA-TDNN + CCS + FSA s=256 c=1024", "melon", 70.3, "paper_27_ccs_fsa_s256_c1024"),
]

#: Every published row by its number ("#15").
ROWS: dict[str, PaperRow] = {row.ref: row for row in _ROWS}


def rows(dataset: str | None = None) -> list[PaperRow]:
    """The published rows in table order, optionally of one dataset ("gtzan" or "melon")."""
    return [row for row in _ROWS if dataset is None or row.dataset == dataset]


def find(ref: str | None) -> PaperRow | None:
    """The row called `ref` ("#15", "15" or "#15 (Table 2)"), or None."""
    if not ref:
        return None
    head = str(ref).strip().split()[0]
    return ROWS.get(head if head.startswith("#") else f"#{head}")
