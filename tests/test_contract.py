"""The one contract check (keras_mgc.contract.check_signatures), on described interpreters.

A LiteRT interpreter is described by its signature list and each runner's tensor details;
`FakeInterpreter` holds exactly those (real models are checked in test_export.py and
test_tag.py), so every rule is exercised in milliseconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from keras_mgc.contract import ContractError, check_signatures, mel_signature_name


class _Runner:
    def __init__(self, inputs: dict, outputs: dict) -> None:
        self._in, self._out = inputs, outputs

    def get_input_details(self) -> dict:
        return self._in

    def get_output_details(self) -> dict:
        return self._out


def _t(shape, dtype=np.float32) -> dict:
    return {"dtype": dtype, "shape": np.maximum(np.asarray(shape), 1), "shape_signature": np.asarray(shape)}


class FakeInterpreter:
    """Signatures -> (inputs, outputs) tensor details, as LiteRT reports them."""

    def __init__(self, signatures: dict) -> None:
        self.signatures = signatures

    def get_signature_list(self) -> dict:
        return {k: {"inputs": list(i), "outputs": sorted(o)} for k, (i, o) in self.signatures.items()}

    def get_signature_runner(self, key: str) -> _Runner:
        return _Runner(*self.signatures[key])


def _model(wave_shape=(-1, -1), classes=10, emb=64, mel_key="classify_mel", wave_dtype=np.float32) -> FakeInterpreter:
    outs = {"probabilities": _t([-1, classes]), "embedding": _t([-1, emb])}
    sigs = {"serving_default": ({"waveform": _t(wave_shape, wave_dtype)}, outs)}
    if mel_key:
        sigs[mel_key] = ({"mel": _t([-1, -1, 48])}, outs)
    return FakeInterpreter(sigs)


def test_resizable_and_fixed_inputs_both_pass_and_fixed_ones_are_reported():
    free = check_signatures(_model(), 10, embedding_size=64, n_mels=48, require_mel=True)
    assert (free.fixed_batch, free.fixed_samples, free.has_embedding) == (None, None, True)
    assert free.mel_signature == "classify_mel"
    assert free.details["serving_default"]["inputs"]["waveform"] == {"dtype": "float32", "shape_signature": [-1, -1]}
    fixed = check_signatures(_model(wave_shape=(2, 44356)), 10)
    assert (fixed.fixed_batch, fixed.fixed_samples) == (2, 44356)


def test_files_from_before_the_rename_keep_their_mel_signature():
    old = _model(mel_key="mel")
    assert mel_signature_name(old.get_signature_list()) == "mel"
    assert check_signatures(old, 10, embedding_size=64, n_mels=48, require_mel=True).mel_signature == "mel"


@pytest.mark.parametrize("model, kwargs, match", [
    (FakeInterpreter({"serve": ({"x": _t([-1, -1])}, {"probabilities": _t([-1, 10])})}), {},
     'needs a "serving_default" signature.*signatures: "serve"'),
    (FakeInterpreter({"serving_default": ({"x": _t([-1, -1])}, {"probabilities": _t([-1, 10])})}), {},
     r"takes \['x'\]"),
    (_model(classes=9), {"labels_source": "labels.txt"}, r'"probabilities" .* has shape \[-1, 9\] but labels.txt names 10'),
    (_model(emb=32), {"embedding_size": 64}, "embedding size 64"),
    (_model(wave_dtype=np.int16), {}, "must be float32"),
    (_model(wave_shape=(-1,)), {}, "of rank 1"),
    (_model(mel_key=None), {"require_mel": True}, 'lacks signature "classify_mel"'),
])
def test_each_violation_names_what_was_found_and_expected(model, kwargs, match):
    with pytest.raises(ContractError, match=match):
        check_signatures(model, 10, **kwargs)
