"""Gradient oracles of neural networks: every worker's minibatch gradient, computed together.

``NetworkOracle`` has the interface of ``compsde.objectives.Oracle``, so the simulator, the
distributed worker, the algorithms and the compressors use a network exactly as a quadratic: the
parameters are one flat row x ∈ ℝᵈ (``FlatParams``), an iterate batch is (R, d), and worker i's
stochastic gradient is

    g_i(x) = ∇_x (1/B) Σ_{b ∈ S_i} ℓ(model(x; a_b), y_b)  +  σ_i T/√B,

with S_i a minibatch of B samples drawn uniformly with replacement from worker i's shard of the
training set (``compsde.objectives.data.worker_shards``: IID or Dirichlet label skew) from the worker's
noise stream (``compsde.core.streams``), and σ_i T/√B optional injected noise (``compsde.objectives.noise``:
Gaussian or Student-t) on top of the real minibatch noise — seed 000's heavy-tail experiments.

The N workers' gradients at a shared iterate come, for models made of Linear layers (the MLP), from one
forward and backward over the N·B samples, each layer's N weight gradients one batched GEMM of its saved
inputs and output gradients (``compsde.objectives.layergrads``); for the other models (and per-worker
iterates) from one call of ``torch.func``: ``vmap`` over workers of ``grad`` of ``functional_call``, so the
forward and backward passes of the N minibatches run as batched matrix products. ``loop_grads`` is the
per-worker loop both are tested against.

Logged metrics: ``loss`` is the training loss on a fixed evaluation subset of the training set,
``grad`` its gradient; ``evaluate`` gives the held-out ``test_loss`` and ``test_accuracy`` (classifiers)
or ``test_perplexity`` (language models).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from compsde.core.checks import MAX_WORKERS, check_choice, check_int, check_number, check_seed, describe
from compsde.core.streams import Streams
from compsde.core.tensors import check_memory, resolve_device, resolve_dtype
from compsde.objectives import problems
from compsde.objectives.data import Dataset, worker_shards
from compsde.objectives.data import load as load_data
from compsde.objectives.layergrads import LayerGrads
from compsde.objectives.models import build, check_sizes, param_count
from compsde.objectives.noise import Noise, gaussian_sign_mean
from compsde.objectives.oracle import GradientOracle

__all__ = ["FlatParams", "MinibatchSample", "NETWORKS", "Network", "NetworkOracle", "cross_entropy"]


class FlatParams:
    """The parameters of a module as one flat row: ``flatten`` (named tensors → (d,)) and ``unflatten``
    ((..., d) → named views, no copy), in the module's parameter order."""

    def __init__(self, module: nn.Module) -> None:
        named = list(module.named_parameters())
        if not named:
            raise ValueError("the model has no parameters to train")
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.dim = sum(self.sizes)

    def flatten(self, params: dict[str, Tensor], batch: tuple[int, ...] = (), out: Tensor | None = None) -> Tensor:
        """Named tensors of shapes (*batch, *shape) → rows (*batch, d), written into ``out`` if given."""
        return torch.cat([params[n].reshape(*batch, -1) for n in self.names], dim=-1, out=out)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        out, lo = {}, 0
        batch = flat.shape[:-1]
        for n, shape, size in zip(self.names, self.shapes, self.sizes):
            out[n] = flat[..., lo: lo + size].view(*batch, *shape)
            lo += size
        return out

    def blocks(self) -> list[int]:
        """Sizes of the per-tensor blocks of the row (for per-layer compression)."""
        return list(self.sizes)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over every position (classes on the last axis of ``logits``)."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@dataclass
class MinibatchSample:
    """One step's draw for a set of workers: their minibatch indices (n, R, B) into the training set and
    the injected noise (n, R, d) or None."""

    workers: list[int]
    indices: Tensor
    noise: Tensor | None


class NetworkOracle(GradientOracle):
    """N workers' minibatch gradients of ``model`` on ``data`` (see the module doc).

    Args:
        model: an ``nn.Module`` whose output is the loss's first argument; buffers are constants.
        data: a ``compsde.objectives.data.Dataset`` (or any object with x, y, x_test, y_test, classes, kind).
        noise: injected noise on top of the minibatch noise (default none).
        workers, batch: N and the per-worker minibatch B.
        split, alpha: how the training set is divided among workers ("iid" or "dirichlet" with α).
        loss: ℓ(outputs, targets) → mean loss; default cross-entropy.
        classifier: whether outputs are class scores (accuracy is reported); default: the loss is the
            default cross-entropy.
        eval_samples: size of the fixed training subset ``loss`` and ``grad`` are measured on, and the
            cap on test samples per evaluation.
        sde_samples: per-sample gradients per worker behind the SDE's noise covariance (``noise_factors``).
        seed: seed of the worker split (the minibatches come from the run's streams).
    """

    def __init__(self, model: nn.Module, data: Dataset, noise: Noise | None = None, *, workers: int, batch: int,
                 split: str = "iid", alpha: float = 1.0, loss: Callable[[Tensor, Tensor], Tensor] | None = None,
                 classifier: bool | None = None, eval_samples: int = 1024, sde_samples: int = 64, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", name: str = "network") -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {describe(model)}")
        noise = Noise("none") if noise is None else noise
        if not isinstance(noise, Noise):
            raise ValueError(f"noise must be a compsde Noise, got {describe(noise)}")
        if loss is not None and not callable(loss):
            raise ValueError(f"loss must be a function (outputs, targets) → scalar, got {describe(loss)}")
        self.workers = check_int("workers", workers, min=1, max=MAX_WORKERS)
        self.batch = check_int("batch", batch, min=1, max=1 << 24)
        for attr in ("x", "y", "x_test", "y_test", "classes", "kind"):
            if not hasattr(data, attr):
                raise ValueError(f"data must be a compsde.objectives.data.Dataset (x, y, x_test, y_test, classes, kind), "
                                 f"got {describe(data)}")
        dtype, device = resolve_dtype(dtype), resolve_device(device)
        self.eval_samples = check_int("eval_samples", eval_samples, min=1, max=1 << 24)
        self.sde_samples = check_int("sde_samples", sde_samples, min=2, max=1 << 16)
        self.split, self.alpha, self.seed = check_choice("split", split, ("iid", "dirichlet")), alpha, check_seed("seed", seed)
        check_number("alpha", alpha, min=0.0, min_open=True, max=1e6)
        self.noise, self.data, self.name = noise, data, name
        self.base_model = copy.deepcopy(model)  # the caller's module is never changed
        self.loss_fn = cross_entropy if loss is None else loss
        self.classifier = (loss is None) if classifier is None else bool(classifier)
        self.dtype, self.device = dtype, torch.device(device)
        self.model = copy.deepcopy(model).to(dtype=dtype, device=self.device)
        self.flat = FlatParams(self.model)
        self.dim = self.flat.dim
        self.buffers = {n: b for n, b in self.model.named_buffers()}
        self.shards = worker_shards(data.y, workers, split=split, alpha=alpha, seed=seed)
        self.sizes = torch.tensor([s.numel() for s in self.shards], dtype=torch.float64)
        self.shard_table = torch.cat(self.shards)
        #: n per worker for the SDE's covariance, and each worker's fixed random order of its shard.
        self.sde_n = self.noise_rank = min(self.sde_samples, max(sh.numel() for sh in self.shards))
        gen = torch.Generator().manual_seed(seed)
        self.sde_subsets = [sh[torch.randperm(sh.numel(), generator=gen)] for sh in self.shards]
        self.offsets = torch.cumsum(torch.tensor([0] + [s.numel() for s in self.shards[:-1]]), 0)
        self.x_train, self.y_train = self._input(data.x), data.y.to(self.device)
        self.x_test, self.y_test = self._input(data.x_test), data.y_test.to(self.device)
        self.scales = noise.worker_scales(workers) / math.sqrt(batch) if noise.active else None
        self._x0 = self.flat.flatten(dict(self.model.named_parameters())).detach().clone()
        self.layer_grads = self._plan_layer_grads()
        self.problem: NetworkOracle | Network = self  # what experiments show as the problem

    def _input(self, x: Tensor) -> Tensor:
        return (x.to(self.dtype) if x.is_floating_point() else x).to(self.device)

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> NetworkOracle:
        """The same oracle (same initial parameters) with tensors of ``dtype`` on ``device``."""
        o = NetworkOracle(copy.deepcopy(self.base_model), self.data, self.noise, workers=self.workers,
                          batch=self.batch, split=self.split, alpha=self.alpha,
                          loss=None if self.loss_fn is cross_entropy else self.loss_fn, classifier=self.classifier,
                          eval_samples=self.eval_samples, sde_samples=self.sde_samples, seed=self.seed, dtype=dtype,
                          device=device, name=self.name)
        if self.problem is not self:
            o.problem = self.problem
        return o

    # ---- the problem ----------------------------------------------------------------------------
    def x0(self) -> Tensor:
        """The model's initial parameters as a row (d,)."""
        return self._x0.clone()

    def reference_point(self) -> Tensor:
        """The centre of the divergence rule: the initial parameters (no optimum is known)."""
        return self._x0

    def distance(self, x: Tensor) -> None:
        return None

    def _loss_at(self, flat: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        return self._loss_named(self.flat.unflatten(flat), xb, yb)

    def _eval_set(self) -> tuple[Tensor, Tensor]:
        m = min(self.eval_samples, self.x_train.shape[0])
        return self.x_train[:m], self.y_train[:m]

    def loss(self, x: Tensor) -> Tensor:
        """Training loss on the evaluation subset at each iterate of x (R, d) → (R,)."""
        xb, yb = self._eval_set()
        with torch.no_grad():
            return torch.stack([self._loss_at(xr, xb, yb) for xr in x.reshape(-1, self.dim)]).view(x.shape[:-1])

    def grad(self, x: Tensor) -> Tensor:
        """∇ of ``loss`` (the evaluation subset's full-batch gradient) at x (R, d)."""
        xb, yb = self._eval_set()
        g = grad(self._loss_at)
        return torch.stack([g(xr, xb, yb) for xr in x.reshape(-1, self.dim)]).view(x.shape)

    def evaluate(self, x: Tensor) -> dict[str, Tensor]:
        """Held-out metrics at x (R, d), each (R,): ``test_loss`` and ``test_accuracy`` (classifiers) or
        ``test_perplexity`` (language models: per-token)."""
        m = min(self.eval_samples, self.x_test.shape[0])
        xb, yb = self.x_test[:m], self.y_test[:m]
        losses, accs = [], []
        with torch.no_grad():
            for xr in x.reshape(-1, self.dim):
                out = functional_call(self.model, {**self.flat.unflatten(xr), **self.buffers}, (xb,))
                losses.append(self.loss_fn(out, yb))
                if self.classifier:
                    accs.append((out.argmax(-1) == yb).to(torch.float64).mean())
        res = {"test_loss": torch.stack(losses).double().view(x.shape[:-1])}
        if self.classifier and self.data.kind == "text":
            res["test_perplexity"] = res["test_loss"].exp()
        elif self.classifier:
            res["test_accuracy"] = torch.stack(accs).view(x.shape[:-1])
        return res

    # ---- stochastic gradients -------------------------------------------------------------------
    def sample(self, streams: Streams, workers: Sequence[int], rows: int, out: Tensor | None = None) -> MinibatchSample:
        """This step's minibatches of ``workers`` (B indices per repetition, uniform with replacement
        over each worker's shard) and then their injected noise, each from the worker's noise stream."""
        workers = list(workers)
        b = self.batch
        u = streams.draw("noise", workers, lambda g: torch.rand(rows, b, generator=g, dtype=torch.float64))
        assert u is not None  # one draw per worker, and a step's chunk holds at least one worker
        ws = torch.tensor(workers)
        pos = (u * self.sizes[ws].view(-1, 1, 1)).long().clamp_max_(self.sizes[ws].long().view(-1, 1, 1) - 1)
        idx = self.shard_table[pos + self.offsets[ws].view(-1, 1, 1)]
        z = None
        if self.scales is not None:
            n, d = len(workers), self.dim
            z = torch.empty(n, rows, d, dtype=self.dtype)
            streams.draw("noise", workers, lambda g, o: self.noise.standard((rows, d), g, self.dtype, out=o), out=z)
            z.mul_(self.scales[ws].to(self.dtype).reshape(n, 1, 1))
            z = z.to(self.device) if out is None else out.copy_(z)
        return MinibatchSample(workers, idx.to(self.device), z)

    def _batches(self, sample: MinibatchSample, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        j0 = sample.workers.index(lo)
        idx = sample.indices[j0: j0 + hi - lo]  # (n, R, B)
        return self.x_train[idx], self.y_train[idx]

    def grads(self, x: Tensor, lo: int, hi: int, sample: MinibatchSample, *, keep_sample: bool = False) -> Tensor:
        """g_i(x) for workers lo ≤ i < hi at the iterates x (R, d) → (hi − lo, R, d), all at once."""
        g = self._minibatch_grads(x, *self._batches(sample, lo, hi))
        if sample.noise is not None:
            j0 = sample.workers.index(lo)
            g.add_(sample.noise[j0: j0 + hi - lo])
        return g

    def _loss_named(self, params: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
        return self.loss_fn(functional_call(self.model, {**params, **self.buffers}, (xb,)), yb)

    def _plan_layer_grads(self) -> LayerGrads | None:
        """``LayerGrads`` for the model when it applies (see ``compsde.objectives.layergrads``) and agrees with
        ``vmap`` on 2 workers × 2 training samples at the initial parameters (a parameter used outside its
        layer, such as a tied weight, would not); else None."""
        lg = LayerGrads.plan(self.model, self.flat.names, self.flat.sizes, self.loss_fn)
        if lg is None or self.x_train.shape[0] < 4:
            return None
        idx = torch.arange(4, device=self.device).view(2, 1, 2)
        xb, yb = self.x_train[idx], self.y_train[idx]
        x = self._x0.unsqueeze(0)
        want = self._vmap_grads(x, xb, yb)
        got = lg(self.flat.unflatten(x[0]), xb[:, 0], yb[:, 0], torch.empty_like(want[:, 0]))
        tol = 1e-4 if self.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-10
        ok = bool(torch.all((got - want[:, 0]).norm(dim=-1) <= tol * want[:, 0].norm(dim=-1).clamp_min(1e-30)))
        return lg if ok else None

    def _minibatch_grads(self, x: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        """∇ of each worker's minibatch loss: xb (n, R, B, ...), x (R, d) shared or (n, R, d) per worker
        (local methods) → (n, R, d).

        At a shared iterate, models that ``LayerGrads`` covers (every parameter a Linear layer's) get all n
        gradients from one forward and backward over the n·B samples per repetition, each layer's n weight
        gradients one batched GEMM written into the rows; otherwise ``_vmap_grads``."""
        if self.layer_grads is None or x.dim() != 2:
            return self._vmap_grads(x, xb, yb)
        n, reps = xb.shape[:2]
        out = torch.empty(n, reps, self.dim, dtype=x.dtype, device=x.device)
        for r in range(reps):
            self.layer_grads(self.flat.unflatten(x[r]), xb[:, r], yb[:, r], out[:, r])
        return out

    def _vmap_grads(self, x: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        """``_minibatch_grads`` by ``vmap`` over workers and repetitions of ``grad`` of ``functional_call``.

        The gradient is taken with respect to the named parameter tensors (views of x), not the flat
        row: the backward of slicing a row would zero-fill and add a d-length gradient per tensor
        (measured 3× slower for an MLP); the tensors' gradients are then concatenated into rows once.
        """
        per_rep = vmap(grad(self._loss_named), in_dims=(0, 0, 0))  # over repetitions: (R, ...), (R, B, ...)
        shared = x.dim() == 2
        g = vmap(per_rep, in_dims=(None if shared else 0, 0, 0))(self.flat.unflatten(x), xb, yb)  # over workers
        return self.flat.flatten(g, (xb.shape[0], x.shape[-2]))

    def loop_grads(self, x: Tensor, lo: int, hi: int, sample: MinibatchSample) -> Tensor:
        """The reference: the same gradients with one autograd backward per worker and repetition (x as in
        ``grads``: shared (R, d) or per worker (n, R, d))."""
        xb, yb = self._batches(sample, lo, hi)
        out = torch.empty(hi - lo, *x.shape[-2:], dtype=x.dtype, device=x.device)
        for i in range(hi - lo):
            xi = x if x.dim() == 2 else x[i]  # shared iterate, or worker i's own (local methods)
            for r in range(xi.shape[0]):
                params = {k: v.detach().clone().requires_grad_(True) for k, v in self.flat.unflatten(xi[r]).items()}
                grads = torch.autograd.grad(self._loss_named(params, xb[i, r], yb[i, r]), list(params.values()))
                self.flat.flatten(dict(zip(params, grads)), out=out[i, r])
        if sample.noise is not None:
            j0 = sample.workers.index(lo)
            out += sample.noise[j0: j0 + hi - lo]
        return out

    def grad_fn(self, lo: int, hi: int, sample: MinibatchSample) -> Callable[[Tensor], Tensor]:
        """params → the workers' gradients on this step's minibatches (for algorithms that evaluate the
        gradient more than once per step)."""
        return lambda x: self.grads(x, lo, hi, sample, keep_sample=True)

    # ---- the law of the noise (for SDE models) --------------------------------------------------
    def _shard(self, i: int, n: int | None = None) -> tuple[Tensor, Tensor]:
        idx = self.shards[i] if n is None else self.sde_subsets[i][:n]
        return self.x_train[idx], self.y_train[idx]

    def mean_grads(self, x: Tensor, lo: int = 0, hi: int | None = None) -> Tensor:
        """E g_i(x): the full-batch gradient of the shard of each worker lo ≤ i < hi (default all),
        (hi − lo, M, d) for x (M, d)."""
        hi = self.workers if hi is None else hi
        per_path = vmap(grad(self._loss_named), in_dims=(0, None, None))
        out = torch.empty(hi - lo, *x.shape, dtype=x.dtype, device=x.device)
        params = self.flat.unflatten(x)
        for i in range(lo, hi):
            g = per_path(params, *self._shard(i))
            self.flat.flatten(g, (x.shape[0],), out=out[i - lo])
        return out

    def noise_factors(self, x: Tensor, lo: int = 0, hi: int | None = None) -> Tensor:
        """F_i with Cov(minibatch noise of worker i) ≈ F_iᵀ F_i for workers lo ≤ i < hi (default all),
        (hi − lo, M, n, d): F_i = (G_i − Ḡ_i)/√(n B) from the
        per-sample gradients G_i (n_i × d) of n_i = min(``sde_samples``, shard size) fixed samples of the
        worker's shard (all of it when smaller: then exact, since minibatches are drawn uniformly with
        replacement from the shard); rows beyond n_i are 0, so every worker has n = ``noise_rank`` rows.
        Low rank, never a d × d matrix; S^{1/2} ξ is then F_iᵀ ζ with ζ ∈ ℝⁿ standard normal."""
        n = self.sde_n
        one = lambda p, a, b: self._loss_named(p, a.unsqueeze(0), b.unsqueeze(0))  # noqa: E731
        per_sample = vmap(vmap(grad(one), in_dims=(None, 0, 0)), in_dims=(0, None, None))  # paths × samples
        hi = self.workers if hi is None else hi
        out = torch.zeros(hi - lo, x.shape[0], n, self.dim, dtype=x.dtype, device=x.device)
        params = self.flat.unflatten(x)
        for i in range(lo, hi):
            n_i = min(n, self.shards[i].numel())  # a smaller shard fills fewer rows (the rest stay 0)
            if n_i < 2:
                raise ValueError(f"worker {i}'s shard has {n_i} sample: its gradient noise covariance needs at least 2")
            g = per_sample(params, *self._shard(i, n_i))
            f = out[i - lo, :, :n_i]
            self.flat.flatten(g, (x.shape[0], n_i), out=f)
            f -= f.mean(dim=1, keepdim=True)
            f /= math.sqrt(n_i * self.batch)
        return out

    def sign_means(self, x: Tensor) -> Tensor:
        """E sign(g_i(x)) per coordinate, (N, M, d), with the minibatch noise taken Gaussian (central limit)
        with the per-coordinate variance of ``noise_factors`` plus the injected Gaussian noise's:
        s = erf(E g / √(2 Var)) (sign(0) = +1)."""
        if self.noise.active and self.noise.name != "gaussian":
            raise ValueError(f"the DSignSGD SDE of a network takes the minibatch noise as Gaussian; with injected "
                             f"{self.noise.name} noise on top the sign probability has no closed form (use noise "
                             "name = 'gaussian' or 'none')")
        g = self.mean_grads(x)
        var = self.noise_factors(x).square().sum(2) + self.noise_variances().to(x).view(-1, 1, 1)
        return gaussian_sign_mean(g, var)

    def check_memory(self, repeats: int) -> None:
        """Refuse a run whose step clearly exceeds memory: N·R gradient rows plus the activations of N·R·B
        samples, estimated as 4× a sample's size per parameter tensor (a rough upper bound)."""
        per_sample = 4 * math.prod(self.x_train.shape[1:]) * max(1, len(self.flat.sizes))
        item = torch.empty((), dtype=self.dtype).element_size()
        check_memory(item * (self.workers * repeats * (self.batch * per_sample + 4 * self.dim)),
                     f"a network run with {self.workers} worker(s) × {repeats} repetition(s) × batch {self.batch} (d = {self.dim})",
                     "reduce workers, repeats, batch or the model's size", self.device)


# ---- networks as problems (what a config's [problem] names) -------------------------------------


class Network:
    """A network problem: a model (``compsde.objectives.models``) on a dataset
    (``compsde.objectives.data``), split across workers. Registered with the problems under the model's
    name, so a config says ``[problem] name = "mlp"``, ``dataset = "digits"`` and the model's size keys;
    ``oracle(noise, workers, batch)`` gives the ``NetworkOracle`` a run draws from."""

    name = ""
    x_opt = None
    f_opt = 0.0
    heterogeneity = 0.0

    def __init__(self, dataset: str, path: str | None, test_fraction: float, split: str, alpha: float,
                 eval_samples: int, sde_samples: int, seed: int, samples: int, features: int, classes: int,
                 context: int, sizes: dict) -> None:
        self.params = {"dataset": dataset, "path": path, "test_fraction": test_fraction, "split": split,
                       "alpha": alpha, "eval_samples": eval_samples, "sde_samples": sde_samples, "seed": seed, **sizes}
        check_choice("split", split, ("iid", "dirichlet"))
        check_number("alpha", alpha, min=0.0, min_open=True, max=1e6)
        self.eval_samples = check_int("eval_samples", eval_samples, min=1, max=1 << 24)
        self.sde_samples = check_int("sde_samples", sde_samples, min=2, max=1 << 16)
        self.split, self.alpha, self.seed = split, alpha, check_seed("seed", seed)
        self.data = load_data(dataset, path=path, test_fraction=test_fraction, seed=seed, samples=samples,
                                  features=features, classes=classes, context=context)
        text_model = self.name == "gpt"
        if (self.data.kind == "text") != text_model:
            raise ValueError(f"dataset {dataset!r} holds {'byte windows' if self.data.kind == 'text' else self.data.kind + 's'}: "
                             + ("use model 'gpt' for text" if not text_model else
                                "model 'gpt' takes text (dataset = 'text' or 'text-file')"))
        self.sizes = check_sizes(self.name, self.data.shape, sizes)
        self.dim = param_count(self.name, self.data.shape, self.data.classes, **self.sizes)
        self._build = lambda: build(self.name, self.data.shape, self.data.classes, seed=seed, **self.sizes)

    def oracle(self, noise: Noise | None = None, *, workers: int, batch: int, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> NetworkOracle:
        o = NetworkOracle(self._build(), self.data, noise, workers=workers, batch=batch, split=self.split,
                          alpha=self.alpha, eval_samples=self.eval_samples, sde_samples=self.sde_samples,
                          seed=self.seed, dtype=dtype,
                          device=device, name=self.name)
        o.problem = self
        return o

    def describe(self) -> str:
        sizes = ", ".join(f"{k} = {list(v) if isinstance(v, tuple) else v}" for k, v in self.sizes.items())
        return f"{self.name} ({sizes}, d = {self.dim:,}) on {self.data.name} ({len(self.data)} training samples)"


class MLPNetwork(Network):
    name = "mlp"

    def __init__(self, dataset: str = "digits", hidden: tuple[int, ...] | list[int] | int = (64,), path: str | None = None,
                 test_fraction: float = 0.2, split: str = "iid", alpha: float = 1.0, eval_samples: int = 512,
                 sde_samples: int = 64, seed: int = 0, samples: int = 2000, features: int = 20,
                 classes: int = 10) -> None:
        super().__init__(dataset, path, test_fraction, split, alpha, eval_samples, sde_samples, seed, samples,
                         features, classes, 64, {"hidden": hidden})


class ResNetNetwork(Network):
    name = "resnet"

    def __init__(self, dataset: str = "digits", width: int = 16, depth: int = 1, stages: int = 3,
                 path: str | None = None, test_fraction: float = 0.2, split: str = "iid", alpha: float = 1.0,
                 eval_samples: int = 512, sde_samples: int = 64, seed: int = 0) -> None:
        super().__init__(dataset, path, test_fraction, split, alpha, eval_samples, sde_samples, seed, 2000, 20, 10,
                         64, {"width": width, "depth": depth, "stages": stages})


class ViTNetwork(Network):
    name = "vit"

    def __init__(self, dataset: str = "digits", patch: int = 4, width: int = 32, depth: int = 2, heads: int = 2,
                 path: str | None = None, test_fraction: float = 0.2, split: str = "iid", alpha: float = 1.0,
                 eval_samples: int = 512, sde_samples: int = 64, seed: int = 0) -> None:
        super().__init__(dataset, path, test_fraction, split, alpha, eval_samples, sde_samples, seed, 2000, 20, 10,
                         64, {"patch": patch, "width": width, "depth": depth, "heads": heads})


class GPTNetwork(Network):
    name = "gpt"

    def __init__(self, dataset: str = "text", context: int = 64, width: int = 32, depth: int = 2, heads: int = 2,
                 path: str | None = None, test_fraction: float = 0.1, eval_samples: int = 64, sde_samples: int = 16,
                 seed: int = 0) -> None:
        super().__init__(dataset, path, test_fraction, "iid", 1.0, eval_samples, sde_samples, seed, 2000, 20, 10,
                         context, {"width": width, "depth": depth, "heads": heads})


NETWORKS = (MLPNetwork, ResNetNetwork, ViTNetwork, GPTNetwork)
for _cls in NETWORKS:
    problems.register(_cls)  # type: ignore[arg-type]
