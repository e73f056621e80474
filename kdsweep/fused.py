"""The models one training loop steps: one module alone, or several same-shaped models fused into one.

A fused group stacks its members' parameters and buffers along a new leading axis and runs one `torch.func.vmap`
of `functional_call` over them: vmap's batching rules turn a conv with stacked weights into one grouped conv and
BatchNorm into one call over B·C channels (each member keeps its own running statistics), which is HFTA's fusion
without rewriting the model, so it works for every torchvision and timm architecture. One AdamW steps the stacked
tensors; AdamW is elementwise, so that is B separate optimizers. The comparison with HFTA-style rewritten modules
is in benchmarks/RESULTS.md ("Fused students").

Every member reads and writes checkpoints in the format of a model trained alone (`state` / `optimizer_state`), so
a run can be fused, killed and resumed unfused, and the other way round.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .data import ViewSpec, make_views


class Solo:
    """One model trained alone: the module itself and its AdamW."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float):
        self.model = model
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def __len__(self) -> int:
        return 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every member, stacked: (1, batch, classes)."""
        return self.model(x)[None]

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def state(self, i: int) -> dict:
        return self.model.state_dict()

    def optimizer_state(self, i: int) -> dict:
        return self.opt.state_dict()

    def load_optimizer(self, states: list[dict]) -> None:
        self.opt.load_state_dict(states[0])

    def keep(self, alive: list[int]) -> None:
        """Solo groups never shrink: a diverged model stops the run (see `engine.train_group`)."""

    def write_back(self, models: list[nn.Module]) -> None:
        """The module is trained in place."""


class _GlobalMean(nn.Module):
    """AdaptiveAvgPool2d(1) as a mean: vmap has no batching rule for the `as_strided_` that pooling a
    channels_last batch calls, and falls back to a loop over the members (a warning, and B kernels instead of one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((-2, -1), keepdim=True)


def _global_means(model: nn.Module) -> nn.Module:
    for m in list(model.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                setattr(m, child_name, _GlobalMean())
    return model


class Fused:
    """B models of identical shapes trained as one: stacked parameters and buffers, one vmapped forward, one AdamW.

    `randomness="same"` gives every member the dropout mask its own run would draw: each separate run seeds the
    global generator alike and draws one mask per step, and "same" draws exactly one mask of the unbatched shape.
    """

    def __init__(self, models: list[nn.Module], lr: float, weight_decay: float):
        self.keys = list(models[0].state_dict())  # a member's state-dict order, as its separate run saves it
        self.base = _global_means(copy.deepcopy(models[0]).to("meta"))  # the structure; tensors from the stacks
        params, buffers = stack_module_state(models)
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        self.buffers = buffers
        self.opt = torch.optim.AdamW(self.params.values(), lr=lr, weight_decay=weight_decay)

        def call(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (p, b), (x,))

        self._forward = vmap(call, in_dims=(0, 0, None), randomness="same")

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every member on the same batch: (B, batch, classes)."""
        return self._forward(self.params, self.buffers, x)

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def state(self, i: int) -> dict:
        """Member i's state dict, as its own module would return it (cloned: a slice would save the whole stack)."""
        both = self.params | self.buffers
        return {k: both[k][i].detach().clone() for k in self.keys}

    def optimizer_state(self, i: int) -> dict:
        """Member i's AdamW state, as an AdamW over its own module's parameters would save it."""
        full = self.opt.state_dict()
        state = {p: {k: (v if k == "step" else v[i].clone()) for k, v in s.items()} for p, s in full["state"].items()}
        return {"state": state, "param_groups": full["param_groups"]}

    def load_optimizer(self, states: list[dict]) -> None:
        """Stack the members' saved AdamW states (their step counts agree: they resume from the same epoch)."""
        first = states[0]
        stacked = {p: {k: (v if k == "step" else torch.stack([s["state"][p][k] for s in states]))
                       for k, v in st.items()}
                   for p, st in first["state"].items() if all(p in s["state"] for s in states)}
        self.opt.load_state_dict({"state": stacked, "param_groups": first["param_groups"]})

    def keep(self, alive: list[int]) -> None:
        """Drop every member not in `alive` (their slices of parameters, buffers and optimizer state)."""
        idx = torch.tensor(alive, device=next(iter(self.params.values())).device)
        states = [self.optimizer_state(i) for i in alive]
        group = self.opt.param_groups[0]
        self.params = {k: v.detach().index_select(0, idx).requires_grad_() for k, v in self.params.items()}
        self.buffers = {k: v.index_select(0, idx) for k, v in self.buffers.items()}
        self.opt = torch.optim.AdamW(self.params.values(), lr=group["lr"], weight_decay=group["weight_decay"])
        self.load_optimizer(states)

    def write_back(self, models: list[nn.Module]) -> None:
        """Copy each member's trained tensors into its own module (models[i] is member i)."""
        for i, m in enumerate(models):
            m.load_state_dict(self.state(i))


@torch.no_grad()
def fused_accuracy(group: Fused, x: torch.Tensor, y: torch.Tensor, spec: ViewSpec, device: torch.device,
                   batch_size: int = 256) -> list[float]:
    """Top-1 test accuracy (0-1) of every member, in eval mode, in one vmapped pass (`measure.accuracy`'s views)."""
    group.train(False)
    hits = torch.zeros(len(group), dtype=torch.int64, device=device)
    amp = device.type == "cuda"
    for xs, ys in zip(x.split(batch_size), y.split(batch_size)):
        v = make_views(xs.to(device, non_blocking=True), spec)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = group.forward(v)
        hits += (logits.argmax(-1) == ys.to(device, non_blocking=True)).sum(-1)
    group.train(True)
    return (hits.double() / len(y)).tolist()  # the one sync
