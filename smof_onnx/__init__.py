"""smof-onnx: compress CNNs in ONNX by cutting kernel borders and channels exactly."""
__version__ = "0.1.0"
