"""The graph library of smof-onnx: exact ONNX rewrites over onnx-graphsurgeon.

Pure onnx + onnx-graphsurgeon + numpy (+ onnxruntime for constant folding and
verification helpers). Never imports torch and never imports ``smof_onnx``.
"""
