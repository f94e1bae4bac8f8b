"""The torch-free half of the learning stage: what can be gated and how a choice is made.

- :mod:`.gates`: the gates of a model (kernel rings, channel slots, families) and how a binary
  choice becomes zeros in the ONNX graph;
- :mod:`.budget`: the FLOPs of the would-be cut model as a function of the gate values;
- :mod:`.select`: from a model to its gates and budget (``prepare``), and from scores to a
  binary choice whose *cut* model meets the target (``select``);
- :mod:`.taps`: which tensors feature distillation compares (the stage outputs);
- :mod:`.defaults`: defaults shared by the methods and the trainer.

Nothing here imports torch (a test imports the package with torch blocked), so ``l2``, ``qr``
and the CLI's option handling use it on machines without PyTorch; the training code that reads
it lives in :mod:`smof_onnx.learn`.
"""
