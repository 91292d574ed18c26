"""keras-mgc: music genre classification with ECAPA-TDNN + CCS + FSA in Keras 3."""

from setuptools import find_packages, setup

# Versions verified together on Python 3.11, November 2026 (see BUILD_NOTES.md).
CORE = [
    "tensorflow-cpu==2.21.0",
    "keras==3.15.1",
    "tensorboard==2.21.0",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "soundfile==0.14.0",
    "soxr==1.1.0",
    "PyYAML==6.0.4",
    "pydantic==2.14.4",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",  # the tagger's progress bar (also a dependency of ai-edge-litert)
]
EXPORT = [
    "tf2onnx==1.17.0",
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
    "ai-edge-litert==2.3.0",
]
# selenium drives Debian's chromium + chromium-driver in tests/test_web.py (apt: scripts/install-test-deps);
# 4.50.0 because 4.52.0 needs a certifi newer than the package index has.
TESTS = ["pytest==9.2.0", "hypothesis==6.170.17", "selenium==4.50.0"]

setup(
    name="keras-mgc",
    version="0.1.0",
    description="Music genre classification toolkit: ECAPA-TDNN with CCS and FSA in Keras 3",
    python_requires=">=3.11",
    packages=find_packages(include=["keras_mgc", "keras_mgc.*"]),
    package_data={"keras_mgc": ["data/split_lists/*/*.txt", "data/split_lists/*/*.md"]},
    include_package_data=True,
    install_requires=CORE,
    extras_require={
        "export": EXPORT,
        "tests": TESTS + EXPORT,
        # The on-device tagger needs only these (no TensorFlow): pip install --no-deps keras-mgc
        # then pip install "keras-mgc[tagger]" on a device image.
        # matplotlib only for --plot.
        "tagger": ["numpy", "soundfile", "soxr", "ai-edge-litert==2.3.0", "tqdm==4.70.1"],
    },
)
