"""int8 inference on CPU: both towers' matrix products in oneDNN's int8 kernels, with static ranges from
a calibration stored beside the model (``cliplab calibrate``) or per-token scales at run time.

* :mod:`.cpu` -- whether this CPU and PyTorch can run it (VNNI or AMX, oneDNN's int8 kernels);
* :mod:`.layers` -- the int8 layers (a fused transformer block, linear, convolution);
* :mod:`.model` -- the int8 copy of a model, built by a generic walk over its layers;
* :mod:`.calibration` -- the calibration: layer input ranges, what it measured, its file;
* :mod:`.calibrate` -- calibrating a pipeline on images and texts and measuring the result;
* :mod:`.onnx` -- the int8 graphs as ONNX (QDQ) with the same scales.

See docs/inference.md for how the path was chosen and what it measures.
"""

from .calibration import CALIBRATION_FILE, Calibration, calibration_path
from .cpu import int8_unavailable
from .model import int8_model, int8_summary

__all__ = ["CALIBRATION_FILE", "Calibration", "calibration_path", "int8_model", "int8_summary", "int8_unavailable"]
