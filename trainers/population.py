"""Many independent copies of one module, trained as one batched computation.

Seeds and communication levels of a benchmark are independent runs of the same architecture, so their
parameters are stacked along a leading "run" dimension and called through ``torch.func.vmap``. Adam is
elementwise, so one Adam over the stacked tensors is exactly one Adam per run; losses are summed (not
averaged) over runs so every run gets its own, unscaled gradient. On this 2-core CPU this ran within 2%
of hand-stacked ``baddbmm`` layers and 1.7x faster per run at 20 runs than at 4.

Modules vmap cannot batch (``nn.GRU``/``nn.LSTM``, ``.item()``, Python branching on data) run with
``vectorized=False``: the same stacked parameters and the same one Adam, but called one member at a
time (``functional_call`` per run). Results are the same; only the speed differs.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


class Population:
    """``len(models)`` modules of identical structure, called at once on inputs ``[runs, ...]``."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        generators: Sequence[torch.Generator] | None = None,
        vectorized: bool = True,
    ):
        """``generators``: one per member, for the dropout masks of MLPs and of other ``nn.Sequential`` models
        (seeded, unlike vmap's draws from the global stream); required when an MLP has dropout.
        ``vectorized=False``: a per-run loop for modules vmap rejects or runs slowly."""
        if not models:
            raise ValueError("a population needs at least one model")
        self._linear = {f"{name}.weight" for name, m in models[0].named_modules() if isinstance(m, nn.Linear)}
        params, self.buffers = stack_module_state(list(models))
        self._set_params(params)
        self._base = copy.deepcopy(models[0]).to("meta")
        self.vectorized = vectorized
        self._call = vmap(self._functional, randomness="different") if vectorized else self._loop
        self._layers = _mlp_layers(models[0]) if vectorized else None
        self.generators = list(generators) if generators is not None else None
        self._parts = _parts(self._base) if self._layers is None and generators is not None else None
        if self._layers is not None:  # plain MLPs: batched matmuls, 1.4x faster than vmap for small ones
            self._call = self._mlp
        elif self._parts is not None:  # a Sequential with dropout: the parts between the members' own dropout masks
            self._call = self._segmented
        dropout = any(op == "dropout" for op, _ in self._layers or ()) or self._parts is not None
        if dropout and (generators is None or len(generators) != len(models)):
            raise ValueError("a population of models with dropout needs one generator per model")

    def _mlp(self, params: dict, buffers: dict, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        for op, name in self._layers:
            if op == "linear":
                weight, bias = params[f"{name}.weight"].transpose(1, 2), params[f"{name}.bias"].unsqueeze(1)
                x = torch.baddbmm(bias, x, weight) if x.dim() == 3 else torch.matmul(x, weight) + bias
            elif op == "relu":
                x = torch.relu(x)
            else:
                x = self._dropout(x, name, rows)
        return x

    def _dropout(self, x: torch.Tensor, p: float, rows: torch.Tensor | None) -> torch.Tensor:
        """Dropout with probability ``p`` in training, each member's mask drawn from its own generator (so a run's
        masks do not depend on which runs share its population)."""
        if not self._base.training or p == 0:
            return x
        members = self.generators if rows is None else [self.generators[i] for i in rows.tolist()]
        keep = torch.stack([torch.rand(x.shape[1:], generator=g, device=g.device) for g in members]) >= p
        return x * keep.to(x.device) / (1 - p)

    def _segmented(self, params: dict, buffers: dict, x: torch.Tensor, rows: torch.Tensor | None = None):
        """The members' ``nn.Sequential`` run part by part: each part between dropouts under ``vmap`` (or member by
        member), each dropout with the members' own masks (``_dropout``). Batch-norm statistics update in place."""
        for part in self._parts:
            if isinstance(part, float):
                x = self._dropout(x, part, rows)
                continue
            names = {name for name, _ in part.named_children()}
            p, b = ({k: v for k, v in d.items() if k.split(".", 1)[0] in names} for d in (params, buffers))
            call = lambda p, b, v, part=part: functional_call(part, (p, b), (v,))  # noqa: E731
            if self.vectorized:
                x = vmap(call, randomness="error")(p, b, x)
            else:
                x = torch.stack([call({k: v[r] for k, v in p.items()}, {k: v[r] for k, v in b.items()}, x[r])
                                 for r in range(len(x))])
        return x

    def _set_params(self, params: dict[str, torch.Tensor]) -> None:
        """Keep ``params`` as the leaves Adam updates; each linear weight ``[runs, out, in]`` is stored as a
        contiguous ``[runs, in, out]``, the layout its batched-matmul gradient comes in, so autograd and the
        fused Adam take it without copying (a sixth of a language step at 20 runs went to those copies)."""
        leaves = {k: v.detach().transpose(1, 2).contiguous() if k in self._linear else v.detach()
                  for k, v in params.items()}
        self._leaves = {k: v.requires_grad_(params[k].requires_grad) for k, v in leaves.items()}

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """Every member's parameters, stacked ``[runs, ...]``, in their modules' own shapes (views of the leaves)."""
        return {k: v.transpose(1, 2) if k in self._linear else v for k, v in self._leaves.items()}

    def _functional(self, params: dict, buffers: dict, *args: torch.Tensor):
        return functional_call(self._base, (params, buffers), args)

    def _loop(self, params: dict, buffers: dict, *args: torch.Tensor, batched: bool = True):
        """One ``functional_call`` per member; ``batched``: member ``r`` gets ``args[...][r]``."""
        outputs = [
            self._functional(
                {k: v[r] for k, v in params.items()},
                {k: v[r] for k, v in buffers.items()},
                *(a[r] if batched else a for a in args),
            )
            for r in range(next(iter(params.values())).shape[0])
        ]
        return _stack(outputs)

    def __call__(self, *args: torch.Tensor):
        """Member ``r`` gets ``args[...][r]``: every input has a leading run dimension."""
        return self._call(self.params, self.buffers, *args)

    def keep(self, rows: list[int]) -> None:
        """Drop every member but ``rows`` (new leaf tensors: rebuild optimisers over ``parameters()``)."""
        self._set_params({k: v.detach()[rows].requires_grad_() for k, v in self.params.items()})
        self.buffers = {k: v[rows].clone() for k, v in self.buffers.items()}
        if self.generators is not None:
            self.generators = [self.generators[i] for i in rows]

    def rows(self, rows: torch.Tensor, *args: torch.Tensor):
        """Only the members ``rows`` (inputs carry a leading dimension of ``len(rows)``). Their buffers are copies, so
        a call here leaves batch-norm running statistics as they were (a scoring pass, not a training pass)."""
        params = {k: v[rows] for k, v in self.params.items()}
        buffers = {k: v[rows] for k, v in self.buffers.items()}
        if self._layers is not None:
            return self._mlp(params, buffers, *args, rows=rows)
        if self._parts is not None:
            return self._segmented(params, buffers, *args, rows=rows)
        return self._call(params, buffers, *args)

    def shared(self, *args: torch.Tensor):
        """Every member gets the same inputs (no run dimension), e.g. an evaluation set."""
        if self._layers is not None:
            return self._mlp(self.params, self.buffers, *args)
        if self._parts is not None:
            return self._segmented(self.params, self.buffers, *(a.expand(len(self), *a.shape) for a in args))
        if not self.vectorized:
            return self._loop(self.params, self.buffers, *args, batched=False)
        in_dims = (0, 0, *([None] * len(args)))
        return vmap(self._functional, in_dims=in_dims, randomness="different")(self.params, self.buffers, *args)

    def to(self, device: torch.device | str) -> Population:
        """Move every member's parameters and buffers (new leaf tensors: build optimisers after)."""
        self._set_params({k: v.detach().to(device).requires_grad_(v.requires_grad) for k, v in self.params.items()})
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        return self

    def member(self, row: int) -> dict[str, torch.Tensor]:
        """Member ``row``'s weights and buffers as a plain state dict (CPU copies)."""
        return {k: v[row].detach().cpu().clone(memory_format=torch.contiguous_format)
                for k, v in {**self.params, **self.buffers}.items()}

    def train(self, mode: bool = True) -> Population:
        """Switch every copy between training and evaluation behaviour (dropout, batch norm)."""
        self._base.train(mode)
        return self

    def eval(self) -> Population:
        return self.train(False)

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return list(self._leaves.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone(memory_format=torch.contiguous_format)
                for k, v in {**self.params, **self.buffers}.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in {**self.params, **self.buffers}.items():
                v.copy_(state[k])


def _stack(outputs: list):
    """Stack per-member outputs (a tensor or a tuple of them) along a new leading run dimension."""
    if isinstance(outputs[0], torch.Tensor):
        return torch.stack(outputs)
    return type(outputs[0])(_stack(list(parts)) for parts in zip(*outputs, strict=True))


def _mlp_layers(model: nn.Module) -> list[tuple[str, object]] | None:
    """``[(op, name or dropout probability)]`` of an ``nn.Sequential`` of Linear layers with ReLU (and
    optionally Dropout) between them, and nothing else; else None."""
    if not isinstance(model, nn.Sequential) or not len(model) or not isinstance(model[-1], nn.Linear):
        return None
    ops: list[tuple[str, object]] = []
    for name, m in model.named_children():
        if isinstance(m, nn.Linear):
            ops.append(("linear", name))
        elif isinstance(m, nn.ReLU) and ops and ops[-1][0] == "linear":
            ops.append(("relu", name))
        elif isinstance(m, nn.Dropout) and ops and ops[-1][0] == "relu":
            ops.append(("dropout", m.p))
        else:
            return None
    return ops


def _parts(model: nn.Module) -> list[nn.Module | float] | None:
    """``model``'s children split at its dropout layers, ``[part, p, part, ...]`` (each part an ``nn.Sequential`` of
    the same child modules under their own names, so the members' stacked weights address it and ``train``/``eval``
    of ``model`` reach it); None when ``model`` is no ``nn.Sequential`` with dropout."""
    if not isinstance(model, nn.Sequential) or not any(isinstance(m, nn.Dropout) for m in model.children()):
        return None
    parts: list[nn.Module | float] = []
    run: dict[str, nn.Module] = {}
    for name, m in model.named_children():
        if isinstance(m, nn.Dropout):
            parts += [nn.Sequential(OrderedDict(run))] if run else []
            parts.append(float(m.p))
            run = {}
        else:
            run[name] = m
    return parts + ([nn.Sequential(OrderedDict(run))] if run else [])
