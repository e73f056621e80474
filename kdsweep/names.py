"""The names every layer agrees on, defined once: stages in dependency order, datasets, pruning and quantization
methods, runtimes and devices (a leaf: imports nothing of kdsweep, so the config schema, the planner, the training
core and the analysis all read the same tuples)."""
from __future__ import annotations

# dependency order: a variant's parent is always of an earlier stage (plan order, tables and progress follow it)
STAGES = ("teacher", "baseline", "student", "pruned", "quantized")
# which ready task a free trial slot takes first: the teacher, its logits, then the KD students (every pruned variant
# waits on one), the no-KD baseline, pruned and quantized variants; latency last, once all training is over
TASK_PRIORITY = ("teacher", "logits", "student", "baseline", "pruned", "quantized", "latency")
DATASETS = ("cifar10", "cifar100", "digits", "synthetic", "tiny-imagenet", "imagefolder")
UNSTRUCTURED, STRUCTURED = "l1_unstructured", "l1_structured"
PRUNE_METHODS = (UNSTRUCTURED, STRUCTURED)
QUANTIZE_METHODS = ("none", "int8")
RUNTIMES = ("torch", "onnxruntime", "tensorrt")  # the values of measure.runtimes
ONNX_RUNTIMES = ("onnxruntime", "tensorrt")  # the runtimes that run a variant's ONNX file
DEVICES = ("cpu", "cuda")


def runtime_label(runtime: str, device: str) -> str:
    """'torch' | 'onnxruntime-cpu' | 'onnxruntime-cuda' | 'tensorrt': a runtime as result rows name it."""
    return f"onnxruntime-{device}" if runtime == "onnxruntime" else runtime
