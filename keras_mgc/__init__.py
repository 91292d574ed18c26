"""keras-mgc: music genre classification with ECAPA-TDNN, CCS and FSA in Keras 3.

Importing the package is cheap and does not import TensorFlow, so that the on-device
tagger (`keras_mgc.tag`) runs where only LiteRT, NumPy and soundfile are installed.
"""

__version__ = "0.1.0"
