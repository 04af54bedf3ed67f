"""Per-worker minibatch gradients from one backward pass over every worker's samples at once.

For n workers at the same parameters, each with a minibatch of B samples, the sum of the workers' mean
losses L = Σ_i (1/B) Σ_{b ∈ S_i} ℓ_b has, at each layer, the same output gradients gy as each worker's own
loss: sample b of worker i only enters L through worker i's term. A Linear layer y = x Wᵀ + b therefore
gives worker i's weight gradient as gy_iᵀ x_i (B × out and B × in blocks of the layer's output gradient and
input), so the n weight gradients are one batched GEMM, ``bmm(gyᵀ, x)`` over (n, B·T, ·) blocks, and the
bias gradients are sums of gy over each worker's rows. A single forward and backward of L over the n·B
samples (without any weight gradient: the parameters do not require grad, only the layers' outputs are
asked for) then yields all n gradients — the FLOPs of one batched backward, each product written straight
into its slice of the output rows.

This is what ``vmap`` over workers of ``grad`` should lower to; it does not apply to every model, so
``LayerGrads.plan`` returns None (the caller keeps ``vmap``) unless every parameter is the weight or bias
of an ``nn.Linear``, the model has no buffers and no dropout (layers whose per-worker behaviour is not
a function of the parameters alone). A parameter also used outside its layer (a tied weight) would be
missed by the layer's hook; ``NetworkOracle`` therefore compares the plan once against ``vmap`` on a
small batch before using it. A layer called more than once per forward (shared weights) accumulates
each call's product.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

__all__ = ["LayerGrads"]

_RANDOM_OR_STATEFUL = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase)


class LayerGrads:
    """Per-worker gradients of a model made of ``nn.Linear`` layers (see the module doc).

    Args:
        model: the module (its parameters are replaced by ``params`` at each call).
        names, sizes: the flat row's parameter names and sizes, in order (``FlatParams``).
        loss_fn: ℓ(outputs, targets) → the mean loss of one worker's minibatch.
    """

    def __init__(self, model: nn.Module, names: list[str], sizes: list[int],
                 loss_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.model, self.loss_fn = model, loss_fn
        offsets: dict[str, tuple[int, int]] = {}
        lo = 0
        for name, size in zip(names, sizes):
            offsets[name] = (lo, lo + size)
            lo += size
        #: Linear layer → (out_features, in_features, (lo, hi) of its weight, (lo, hi) of its bias or None)
        self.layers: dict[nn.Module, tuple[int, int, tuple[int, int], tuple[int, int] | None]] = {}
        for mname, m in model.named_modules():
            if isinstance(m, nn.Linear):
                prefix = f"{mname}." if mname else ""
                self.layers[m] = (m.out_features, m.in_features, offsets[prefix + "weight"],
                                  offsets[prefix + "bias"] if m.bias is not None else None)

    @staticmethod
    def plan(model: nn.Module, names: list[str], sizes: list[int],
             loss_fn: Callable[[Tensor, Tensor], Tensor]) -> LayerGrads | None:
        """A ``LayerGrads`` for ``model``, or None when some parameter is not a Linear layer's weight or bias,
        or the model has buffers or dropout."""
        if any(True for _ in model.buffers()):
            return None
        if any(isinstance(m, _RANDOM_OR_STATEFUL) for m in model.modules()):
            return None
        owned: set[str] = set()
        for mname, m in model.named_modules():
            if isinstance(m, nn.Linear):
                prefix = f"{mname}." if mname else ""
                owned.update(prefix + k for k, _ in m.named_parameters(recurse=False))
        if set(names) != owned:
            return None
        return LayerGrads(model, names, sizes, loss_fn)

    def __call__(self, params: dict[str, Tensor], xb: Tensor, yb: Tensor, out: Tensor) -> Tensor:
        """Worker i's gradient of loss_fn(model(xb[i]), yb[i]) into out[i], for xb (n, B, ...), yb (n, B, ...),
        out (n, d) (rows may be strided: each parameter's slice of a row must be contiguous). Returns out."""
        n, b = xb.shape[:2]
        calls: list[tuple[nn.Module, Tensor, Tensor]] = []

        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            if not output.requires_grad:  # the first layer: nothing upstream needs a gradient
                output.requires_grad_(True)
            calls.append((module, args[0], output))

        handles = [m.register_forward_hook(record) for m in self.layers]
        try:
            with torch.enable_grad():
                logits = functional_call(self.model, params, (xb.reshape(n * b, *xb.shape[2:]),))
                loss = vmap(self.loss_fn)(logits.view(n, b, *logits.shape[1:]), yb).sum()
                gys = torch.autograd.grad(loss, [y for _, _, y in calls], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        with torch.no_grad():
            done: set[nn.Module] = set()
            for (module, x, _), gy in zip(calls, gys):
                fout, fin, (wlo, whi), bias = self.layers[module]
                first = module not in done
                done.add(module)
                w = out[:, wlo:whi].view(n, fout, fin)
                if gy is None:
                    if first:
                        w.zero_()
                        if bias is not None:
                            out[:, bias[0]:bias[1]].zero_()
                    continue
                g3 = gy.reshape(n, -1, fout)
                x3 = x.reshape(n, -1, fin)
                if first:
                    torch.bmm(g3.transpose(1, 2), x3, out=w)
                else:
                    w.baddbmm_(g3.transpose(1, 2), x3)
                if bias is not None:
                    bv = out[:, bias[0]:bias[1]]
                    if first:
                        torch.sum(g3, dim=1, out=bv)
                    else:
                        bv += g3.sum(dim=1)
            for module, (_, _, (wlo, whi), bias) in self.layers.items():
                if module not in done:  # a layer the forward never called has zero gradient
                    out[:, wlo:whi].zero_()
                    if bias is not None:
                        out[:, bias[0]:bias[1]].zero_()
        return out
