"""Reference pages generated from the code so that they cannot drift: docs/configuration.md from the pydantic schema,
docs/cli.md from the argument parser and docs/results.md from the results schema. `scripts/gen_docs.py` writes
them; tests/test_docs.py fails when one is stale or a config key or results column has no meaning written for it.
"""
from __future__ import annotations

import argparse
import json
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from .cli import EXIT_CODES, parser
from .config import Config
from .results import COLUMNS, DESCRIPTIONS, SCHEMA

# what each key means, for the keys whose pydantic Field carries no description
MEANINGS = {
    "name": "experiment name: results go to `<storage>/<name>`",
    "seeds": "grid axis: every variant is trained once per seed",
    "data.dataset": "`cifar10`, `cifar100` (torchvision files under `data.root`), `tiny-imagenet`, `imagefolder` "
                    "(`train/` and `val/` class folders), `digits` (sklearn, offline, 32 px), `synthetic` (random)",
    "data.root": "where the dataset's files are (or are downloaded to)",
    "data.download": "download CIFAR when missing (never over a file that fails verification)",
    "data.verify": "check CIFAR archives against their published md5; `false` for archives you generated",
    "data.image_size": "training and evaluation image size (px)",
    "data.normalize": "`imagenet` mean/std normalisation, or `none`",
    "data.augment": "any of `flip`, `crop`, `randaugment`, `mixup`, `cutmix`; replayable per (seed, epoch, index)",
    "data.split_seed": "the fixed stratified 80/20 split of `digits`",
    "arch": "torchvision name, a built-in, or `timm:<name>`",
    "weights": "`imagenet` (torchvision's IMAGENET1K_V1), `none`, or a path to a saved state dict",
    "epochs": "training epochs",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "batch_size": "training batch size",
    "schedule": "`cosine` or `constant` learning rate",
    "kd.temperature": "grid axis: KD temperature T",
    "kd.alpha": "grid axis: weight of the soft-target term (0 = plain cross-entropy)",
    "kd.label_smoothing": "label smoothing of the hard-label cross-entropy",
    "kd.teacher_logits": "`cached` (one teacher pass over every student view, exact) or `online`",
    "prune.amount": "grid axis: fraction of weights (unstructured) or channels (structured) removed",
    "prune.method": "grid axis: `l1_unstructured` (masks) or `l1_structured` (channels removed)",
    "prune.scope": "`layer` (each layer by its own L1 ranking) or `global`",
    "prune.recovery_epochs": "KD epochs after pruning (same T and alpha as the parent)",
    "prune.recalibrate_bn": "re-estimate BatchNorm statistics right after pruning",
    "quantize.method": "grid axis: `none` or `int8` (ONNX Runtime static INT8 children)",
    "quantize.stages": "which stages' variants get an INT8 child",
    "measure.latency_device": "`auto` (each runtime on the best device its trial has), `cpu` or `cuda`",
    "measure.warmup": "untimed batch-1 iterations before timing",
    "measure.iters": "timed batch-1 iterations per model (interleaved across models)",
    "measure.runtimes": "any of `torch`, `onnxruntime`, `tensorrt` (CUDA only)",
    "resources.cpus_per_trial": "CPUs (and torch threads) per Ray trial",
    "resources.gpus_per_trial": "GPU share per trial (ignored where the cluster has no GPU)",
    "sweep": "dotted key -> list of values: any config key as a grid axis",
}


def _type(a: Any) -> str:
    origin, args = get_origin(a), get_args(a)
    if origin is Literal:
        return " \\| ".join(f"`{x}`" for x in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type(x) for x in args)
    if origin in (list, tuple):
        return f"list of {', '.join(_type(x) for x in args if x is not Ellipsis)}"
    if origin is dict:
        return f"map {_type(args[0])} -> {_type(args[1])}"
    return "null" if a is type(None) else getattr(a, "__name__", str(a))


def config_keys() -> list[tuple[str, str, Any, str | None]]:
    """(dotted key, type, default, meaning) of every config key, in the schema's order."""
    out: list[tuple[str, str, Any, str | None]] = []

    def walk(model: BaseModel, prefix: str) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                walk(value, f"{prefix}{name}.")
                continue
            key = prefix + name
            meaning = field.description or MEANINGS.get(key) or MEANINGS.get(name)
            out.append((key, _type(field.annotation), value, meaning))

    walk(Config(), "")
    return out


def configuration_page() -> str:
    """docs/configuration.md: every key with its type, default and meaning."""
    lines = ["# Configuration reference", "",
             "Generated from the pydantic schema (`kdsweep/config.py`) by `python scripts/gen_docs.py`; do not edit.",
             "Set keys in the YAML config or with `--set KEY=VALUE` (the value is parsed as YAML). Defaults are "
             "those of a config that leaves the key out.", "",
             "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, kind, default, meaning in config_keys():
        lines.append(f"| `{key}` | {kind} | `{json.dumps(default)}` | {meaning or ''} |")
    return "\n".join(lines) + "\n"


def cli_page() -> str:
    """docs/cli.md: every command with its arguments, defaults and help, and the exit codes."""
    ap = parser()
    lines = ["# Command line reference", "",
             "Generated from the argument parser (`kdsweep/cli.py`) by `python scripts/gen_docs.py`; do not edit.", ""]
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    for name, sp in sub.choices.items():
        lines += [f"## `kdsweep {name}`", "", helps.get(name) or "", "", "| argument | default | help |",
                  "| --- | --- | --- |"]
        for a in sp._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            arg = ", ".join(a.option_strings) or a.dest
            default = "" if a.default in (None, [], False) or not a.option_strings else f"`{a.default}`"
            lines.append(f"| `{arg}` | {default} | {a.help or ''} |")
        lines.append("")
    lines += ["`kdsweep --version` prints the version.", "", "## Exit codes", "", "| code | meaning |",
              "| --- | --- |"] + [f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items()]
    return "\n".join(lines) + "\n"


def results_page() -> str:
    """docs/results.md: every results column with its type and meaning, and how to read an experiment's results."""
    lines = ["# Results reference", "",
             "Generated from the results schema (`kdsweep/results.py`) by `python scripts/gen_docs.py`; do not edit.",
             "", "An experiment `<storage>/<name>/` keeps one Parquet file per variant in `results/`, written "
             "atomically, with **one row per (runtime, device)** the variant was timed under; the training columns "
             "repeat on each row. A failed or skipped variant has one row with `runtime` null. `kdsweep analyze` "
             "turns them into `analysis/results.csv` (one row per variant and seed: `Variant,Accuracy,LatencyMs,SizeMB`"
             ", then one `LatencyMs[<runtime>]` column per runtime), `tradeoffs.md` and `metrics_grid.png`.", "",
             "## Reading them", "", "```python",
             "from kdsweep.results import read_results   # also reads files of older kdsweep versions",
             "df = read_results(\"runs/smoke/results\")",
             "df.pivot_table(index=\"variant\", columns=\"runtime\", values=\"latency_ms\")  # latency by runtime",
             "", "import duckdb                                # any Parquet reader works on files of one version",
             "duckdb.sql(\"SELECT variant, runtime, test_acc, latency_ms FROM 'runs/smoke/results/*.parquet'\")",
             "", "import polars as pl",
             "pl.read_parquet(\"runs/smoke/results/*.parquet\")", "```", "",
             "## Columns", "", "In the contract's order (DESIGN.md, \"Results contract\").", "",
             "| column | type | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{c}` | {SCHEMA.field(c).type} | {DESCRIPTIONS[c]} |" for c in COLUMNS]
    return "\n".join(lines) + "\n"
