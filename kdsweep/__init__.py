"""kdsweep: sweep knowledge distillation and pruning settings and report the accuracy/latency/size trade-off."""
__version__ = "0.1.0"
