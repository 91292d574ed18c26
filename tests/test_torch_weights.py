"""The PyTorch state_dict converter's bookkeeping, without torch: keys, shapes, layouts, errors.

The numerical proof (Keras logits == the PyTorch reference's) is tests/test_parity.py, which
needs torch; these tests build authors'-layout state dicts from the converter's own plan and
check what every user of a checkpoint meets: the key names of the authors' files, every
variable filled, and clear errors naming the keys that do not fit.
"""

from __future__ import annotations

import numpy as np
import pytest

from keras_mgc.config import ECAPAConfig
from keras_mgc.frontend import mel_filterbank
from keras_mgc.models import build_model
from keras_mgc.models.torch_weights import (
    FBANK_FILTERS,
    FBANK_WINDOW,
    TorchWeightsError,
    load_torch_state_dict,
    torch_plan,
)

SMALL = dict(res2_scale=2, se_channels=8, attention_channels=8)


def _state(model, seed: int = 0) -> dict[str, np.ndarray]:
    """A random state dict in the authors' layout for `model`, with the torchaudio buffers."""
    rng = np.random.default_rng(seed)
    plan = torch_plan(model)
    state = {e.key: rng.standard_normal(e.torch_shape).astype("float32") for e in plan.entries}
    state.update({k: np.array(3) for k in plan.dropped})
    n = np.arange(512)
    state[FBANK_WINDOW] = (0.5 - 0.5 * np.cos(2 * np.pi * n / 512)).astype("float32")
    state[FBANK_FILTERS] = mel_filterbank().astype("float32")
    return state


@pytest.fixture(scope="module")
def ccs_model():
    return build_model(ECAPAConfig(channels=16, ccs={"stop": 8}, **SMALL), num_classes=4)


def test_key_names_are_the_authors_layouts():
    vanilla = {e.key for e in torch_plan(build_model(ECAPAConfig(channels=16, **SMALL), 4)).entries}
    assert {"conv1.weight", "bn1.running_var", "layer1.convs.0.weight", "layer3.se.se.3.bias", "layer4.weight",
            "attention.0.weight", "attention.2.running_mean", "attention.4.bias", "bn5.weight", "fc6.weight",
            "bn6.running_var"} <= vanilla
    assert not any("upsample" in k for k in vanilla)  # C -> C blocks have no residual conv
    fsa = {e.key for e in torch_plan(build_model(
        ECAPAConfig(channels=32, ccs={"stop": 16}, fsa={"enabled": True}, **SMALL), 4)).entries}
    assert {"band1.conv1.weight", "band4.layer3.upsample.weight", "layer4.conv1.weight", "layer4.upsample.weight",
            "layer4.se.se.1.weight"} <= fsa
    assert not any(k.startswith("mid_band_extractor") for k in fsa)


def test_every_variable_is_filled_in_keras_layout(ccs_model):
    state = _state(ccs_model)
    load_torch_state_dict(ccs_model, state)
    plan = torch_plan(ccs_model)
    # Every weight of the model (trainable or BatchNorm statistic) is covered exactly once.
    assert sorted(id(e.variable) for e in plan.entries) == sorted(id(v) for v in ccs_model.weights)
    first = ccs_model.get_layer("backbone").get_layer("sub_bands").extractors[0].first
    torch_kernel = state["mid_band_extractor.conv1.weight"]  # (out, in, k)
    np.testing.assert_array_equal(np.asarray(first.conv.kernel), torch_kernel.transpose(2, 1, 0))
    np.testing.assert_array_equal(np.asarray(first.bn.moving_variance), state["mid_band_extractor.bn1.running_var"])
    # CCS without FSA: the authors pool [stops, last conv], this model [last conv, stops].
    head = ccs_model.get_layer("head")
    pooled = ccs_model.get_layer("backbone").get_layer("pooling")._args["channels"]
    stop = 3 * 8
    np.testing.assert_array_equal(np.asarray(head.embedding_bn.gamma)[: pooled - stop], state["bn5.weight"][stop:pooled])
    np.testing.assert_array_equal(np.asarray(head.dense.kernel)[pooled - stop : pooled], state["fc6.weight"][:, :stop].T)


def test_data_parallel_prefix_is_accepted(ccs_model):
    state = {f"module.{k}": v for k, v in _state(ccs_model, 1).items()}
    load_torch_state_dict(ccs_model, state)
    np.testing.assert_array_equal(np.asarray(ccs_model.get_layer("head").logit_bn.moving_mean),
                                  state["module.bn6.running_mean"])


def test_missing_unexpected_and_misshaped_keys_are_named(ccs_model):
    before = [np.asarray(w).copy() for w in ccs_model.weights]
    state = _state(ccs_model, 2)
    del state["mid_band_extractor.layer2.bns.0.running_var"]
    state["projector.weight"] = np.zeros((3, 3), "float32")
    state["fc6.weight"] = np.zeros((7, state["fc6.weight"].shape[1]), "float32")  # 7 classes, the model has 4
    with pytest.raises(TorchWeightsError) as err:
        load_torch_state_dict(ccs_model, state)
    msg = str(err.value)
    assert "missing keys (1): mid_band_extractor.layer2.bns.0.running_var" in msg
    assert "unexpected keys (1): projector.weight" in msg
    assert "fc6.weight: (7, 120) in the state dict, the Keras model needs (4, 120)" in msg
    # Nothing was loaded.
    assert all(np.array_equal(a, np.asarray(w)) for a, w in zip(before, ccs_model.weights))


def test_another_architecture_is_refused_by_name(ccs_model):
    fsa = build_model(ECAPAConfig(channels=32, ccs={"stop": 16}, fsa={"enabled": True}, **SMALL), 4)
    with pytest.raises(TorchWeightsError, match=r"missing keys \(\d+\): band1\.conv1\.weight"):
        load_torch_state_dict(fsa, _state(ccs_model))


def test_frontend_buffers_are_checked(ccs_model):
    state = _state(ccs_model, 3)
    state[FBANK_FILTERS] = mel_filterbank(sample_rate=16000).astype("float32")
    with pytest.raises(TorchWeightsError, match=r"torchfbank\.0\.mel_scale\.fb: differs from the model's HTK mel"):
        load_torch_state_dict(ccs_model, state)
    state[FBANK_FILTERS] = mel_filterbank(n_mels=40).astype("float32")
    with pytest.raises(TorchWeightsError, match=r"mel_scale\.fb: shape \(1025, 40\), the model's front end has"):
        load_torch_state_dict(ccs_model, state)
    mel_model = build_model(ECAPAConfig(channels=16, ccs={"stop": 8}, input="mel", **SMALL), 4)
    with pytest.raises(TorchWeightsError, match="computes mels from audio but the Keras model takes mels"):
        load_torch_state_dict(mel_model, _state(ccs_model))


def test_not_an_ecapa_model_is_refused():
    import keras

    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="plain")
    with pytest.raises(TorchWeightsError, match="model 'plain' is not an ECAPA-TDNN classifier"):
        load_torch_state_dict(plain, {})
