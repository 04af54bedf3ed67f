"""Networks on data: datasets and loaders, splits, models, and the vmapped per-worker gradients."""

from __future__ import annotations

import gzip
import math
import pickle
import struct

import numpy as np
import pytest
import torch

from compsde.core.streams import Streams
from compsde.objectives import data as D
from compsde.objectives.models import build, check_sizes, param_count
from compsde.objectives.network import NetworkOracle
from compsde.objectives.noise import Noise

# ---- bundled data -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,shape,classes,n", [("digits", (1, 8, 8), 10, 1797), ("breast-cancer", (30,), 2, 569),
                                                  ("mnist", (1, 28, 28), 10, 5000)])
def test_bundled_tables_load_with_their_sizes(name, shape, classes, n):
    ds = D.load(name, test_fraction=0.2)
    assert ds.shape == shape and ds.classes == classes
    assert len(ds) + ds.x_test.shape[0] == n
    assert set(ds.y.unique().tolist()) == set(range(classes))
    if ds.kind == "image":
        assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    else:  # standardised with the training split's statistics
        assert torch.allclose(ds.x.mean(0), torch.zeros(shape), atol=1e-4)


def test_stdlib_text_is_byte_windows_with_next_byte_targets():
    ds = D.load("text", context=32)
    assert ds.kind == "text" and ds.classes == 256 and ds.shape == (32,)
    assert len(ds) + ds.x_test.shape[0] > 10_000  # ~465 kB / 32
    assert torch.equal(ds.x[:, 1:], ds.y[:, :-1])


def test_split_is_a_partition_and_depends_on_the_seed():
    a, b = D.load("digits", seed=0), D.load("digits", seed=1)
    assert not torch.equal(a.y, b.y)
    whole = torch.cat([a.x, a.x_test]).reshape(len(a) + a.x_test.shape[0], -1)
    assert whole.unique(dim=0).shape[0] == torch.cat([b.x, b.x_test]).reshape(whole.shape).unique(dim=0).shape[0]


@pytest.mark.parametrize("name", ["teacher", "mixture"])
def test_synthetic_tasks_are_learnable_and_seeded(name):
    ds = D.load(name, samples=400, features=5, classes=3, seed=3)
    assert ds.shape == (5,) and ds.classes == 3 and len(ds) == 320
    assert torch.equal(ds.x, D.load(name, samples=400, features=5, classes=3, seed=3).x)
    assert len(ds.y.unique()) >= 2


# ---- file formats -------------------------------------------------------------------------------

def _idx(path, arr, code=0x08, gz=False):
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    (gzip.open if gz else open)(path, "wb").write(raw)


def test_idx_folder_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    for part, n, gz in (("train", 12, False), ("t10k", 5, True)):
        _idx(tmp_path / (f"{part}-images-idx3-ubyte" + (".gz" if gz else "")), rng.integers(0, 256, (n, 4, 4), dtype=np.uint8), gz=gz)
        _idx(tmp_path / (f"{part}-labels-idx1-ubyte" + (".gz" if gz else "")), rng.integers(0, 3, (n,), dtype=np.uint8), gz=gz)
    ds = D.load("mnist-idx", path=tmp_path)
    assert ds.x.shape == (12, 1, 4, 4) and ds.x_test.shape == (5, 1, 4, 4) and ds.kind == "image"
    img = D.load_idx(tmp_path / "train-images-idx3-ubyte")
    assert torch.allclose(ds.x[:, 0], torch.from_numpy(img / 255.0).float())


def test_idx_corrupt_headers_are_named(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x00\x00\x08")
    with pytest.raises(ValueError, match="not an IDX file"):
        D.load_idx(p)
    p.write_bytes(bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 3, 3) + b"\x00" * 8)
    with pytest.raises(ValueError, match="announces shape"):
        D.load_idx(p)
    p.write_bytes(bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 1 << 31, 1 << 31))
    with pytest.raises(ValueError, match="memory|exceeds|GiB|TiB"):
        D.load_idx(p)
    with pytest.raises(ValueError, match="missing train-images"):
        D.load("mnist-idx", path=tmp_path)


def _cifar(path, n, seed):
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}, fh)


def test_cifar_folder_loads_and_refuses_code(tmp_path):
    for i in (1, 2):
        _cifar(tmp_path / f"data_batch_{i}", 4, i)
    _cifar(tmp_path / "test_batch", 3, 9)
    ds = D.load("cifar10", path=tmp_path)
    assert ds.x.shape == (8, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32) and ds.classes == 10

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "data_batch_3", "wb") as fh:
        pickle.dump(Evil(), fh)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        D.load("cifar10", path=tmp_path)


def test_text_file_and_bad_paths(tmp_path):
    (tmp_path / "t.txt").write_text("hello world, " * 40)
    ds = D.load("text-file", path=tmp_path / "t.txt", context=8)
    assert ds.shape == (8,)
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe" * 100)
    with pytest.raises(ValueError, match="UTF-8"):
        D.load("text-file", path=tmp_path / "b.txt")
    with pytest.raises(ValueError, match="no such file"):
        D.load("text-file", path=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="set path"):
        D.load("cifar10")
    with pytest.raises(ValueError, match="dataset must be one of"):
        D.load("imagenet")
    with pytest.raises(ValueError, match="path is only for"):
        D.load("digits", path="x")


# ---- worker splits ------------------------------------------------------------------------------

def test_iid_and_dirichlet_shards_partition_the_training_set():
    y = torch.arange(600) % 6
    for split, alpha in (("iid", 1.0), ("dirichlet", 0.1), ("dirichlet", 100.0)):
        shards = D.worker_shards(y, 5, split=split, alpha=alpha, seed=0)
        assert torch.equal(torch.cat(shards).sort().values, torch.arange(600))
    iid = D.worker_shards(y, 5, seed=0)
    assert max(s.numel() for s in iid) - min(s.numel() for s in iid) <= 1
    # label skew: with α = 0.1 most of a worker's samples come from few classes; with α = 100, near uniform
    skew = lambda shards: np.mean([torch.bincount(y[s], minlength=6).max().item() / s.numel() for s in shards])  # noqa: E731
    assert skew(D.worker_shards(y, 5, split="dirichlet", alpha=0.1, seed=0)) > 0.5
    assert skew(D.worker_shards(y, 5, split="dirichlet", alpha=100.0, seed=0)) < 0.3
    with pytest.raises(ValueError, match="workers = 700 exceeds"):
        D.worker_shards(y, 700)


# ---- models -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,shape,classes,sizes", [
    ("mlp", (1, 8, 8), 10, {"hidden": [16, 8]}), ("resnet", (1, 8, 8), 10, {"width": 8}),
    ("resnet", (3, 32, 32), 10, {"width": 4, "depth": 2}), ("vit", (1, 8, 8), 10, {"patch": 4, "width": 8}),
    ("gpt", (16,), 256, {"width": 8, "heads": 2}),
])
def test_models_count_their_parameters_and_run(name, shape, classes, sizes):
    m = build(name, shape, classes, **sizes)
    d = sum(p.numel() for p in m.parameters())
    assert param_count(name, shape, classes, **check_sizes(name, shape, sizes)) == d
    assert not list(m.buffers())  # functions of their parameters only
    x = torch.randint(256, (3, *shape)) if name == "gpt" else torch.rand(3, *shape)
    out = m(x)
    assert out.shape == ((3, shape[0], classes) if name == "gpt" else (3, classes))


def test_model_size_errors_are_named():
    with pytest.raises(ValueError, match="no size key.*depth"):
        build("mlp", (4,), 2, depth=3)
    with pytest.raises(ValueError, match="multiple of heads"):
        build("vit", (1, 8, 8), 10, width=10, heads=4)
    with pytest.raises(ValueError, match="takes images"):
        build("resnet", (30,), 2)
    with pytest.raises(ValueError, match="memory|GiB|TiB"):
        build("mlp", (4,), 2, hidden=[1 << 20, 1 << 20, 1 << 20])


# ---- the network oracle -------------------------------------------------------------------------

def _oracle(name="mlp", workers=3, batch=4, noise=None, dtype=torch.float64, **sizes):
    ds = D.load("digits", seed=0)
    model = build(name, ds.shape, ds.classes, **({"hidden": [8]} if name == "mlp" else sizes))
    return NetworkOracle(model, ds, noise, workers=workers, batch=batch, dtype=dtype)


@pytest.mark.parametrize("name,sizes", [("mlp", {}), ("resnet", {"width": 4, "stages": 2}), ("vit", {"width": 8, "depth": 1})])
def test_vmapped_worker_gradients_equal_the_per_worker_loop(name, sizes):
    o = _oracle(name, **sizes)
    streams = Streams(0, o.workers)
    x = torch.stack([o.x0(), o.x0() + 0.01 * torch.randn(o.dim, dtype=o.dtype)])  # two repetitions
    s = o.sample(streams, range(3), 2)
    assert s.indices.shape == (3, 2, 4)
    fast, slow = o.grads(x, 0, 3, s), o.loop_grads(x, 0, 3, s)
    assert fast.shape == (3, 2, o.dim)
    # float64; batched and per-sample matrix products add in different orders: a few ulps per operation
    assert torch.allclose(fast, slow, rtol=1e-9, atol=1e-12)


def _any_oracle(name, dtype, workers=3, batch=5):
    if name == "gpt":
        ds = D.load("text", context=16)
        model = build("gpt", ds.shape, 256, width=8, depth=1)
    else:
        ds = D.load("digits", seed=0)
        sizes = {"mlp": {"hidden": [8]}, "mlp3": {"hidden": [12, 8, 6]}, "resnet": {"width": 4, "stages": 2},
                 "vit": {"width": 8, "depth": 1}}[name]
        model = build(name.rstrip("3"), ds.shape, ds.classes, **sizes)
    return NetworkOracle(model, ds, workers=workers, batch=batch, dtype=dtype, eval_samples=8)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("name", ["mlp", "mlp3", "resnet", "vit", "gpt"])
def test_simulator_gradients_equal_the_loop_to_rounding_on_every_model(name, dtype, tol):
    o = _any_oracle(name, dtype)
    assert (o.layer_grads is not None) == name.startswith("mlp")  # batched GEMMs for Linear-only models
    x = o.x0() + 0.01 * torch.randn(2, o.dim, dtype=dtype)  # two repetitions at different iterates
    s = o.sample(Streams(3, 3), range(3), 2)
    assert not torch.equal(s.indices[0], s.indices[1])  # the workers' minibatches differ
    fast, ref = o.grads(x, 0, 3, s), o.loop_grads(x, 0, 3, s)
    assert ((fast - ref).norm(dim=-1) / ref.norm(dim=-1)).max() <= tol
    own = x.expand(3, 2, o.dim) + 0.01 * torch.randn(3, 2, o.dim, dtype=dtype)  # per-worker iterates: vmap
    fast, ref = o.grads(own, 0, 3, s), o.loop_grads(own, 0, 3, s)
    assert ((fast - ref).norm(dim=-1) / ref.norm(dim=-1)).max() <= tol


class _Tied(torch.nn.Module):
    """A Linear layer whose weight is also used outside it: the layer's hook alone would miss that use."""

    def __init__(self, features, classes):
        super().__init__()
        self.inp = torch.nn.Linear(features, classes)
        self.out = torch.nn.Linear(classes, classes)

    def forward(self, x):
        h = torch.tanh(self.inp(x.flatten(1)))
        return self.out(h) + h @ self.out.weight


class _Twice(_Tied):
    """The same two layers, the second called twice per forward (shared weights): its products accumulate."""

    def forward(self, x):
        return self.out(torch.tanh(self.out(torch.tanh(self.inp(x.flatten(1))))))


class _Dropped(torch.nn.Module):
    def __init__(self, features, classes):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(features, 8), torch.nn.Dropout(0.5),
                                       torch.nn.Linear(8, classes))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("cls,batched", [(_Tied, False), (_Twice, True), (_Dropped, False)])
def test_batched_layer_gradients_only_where_they_are_exact(cls, batched):
    ds = D.load("digits", seed=0)
    torch.manual_seed(0)
    o = NetworkOracle(cls(64, ds.classes).eval() if cls is _Dropped else cls(64, ds.classes), ds, workers=2,
                      batch=3, dtype=torch.float64)
    assert (o.layer_grads is not None) == batched
    x = o.x0().unsqueeze(0)
    s = o.sample(Streams(0, 2), range(2), 1)
    ref = o.loop_grads(x, 0, 2, s)
    assert ((o.grads(x, 0, 2, s) - ref).norm(dim=-1) / ref.norm(dim=-1)).max() <= 1e-12


def test_minibatches_come_from_each_workers_shard_and_stream():
    o = _oracle(workers=4, batch=64)
    s = o.sample(Streams(5, 4), range(4), 1)
    for w in range(4):
        assert set(s.indices[w].reshape(-1).tolist()) <= set(o.shards[w].tolist())
    # worker 2 alone draws what it draws among the others (its own stream)
    alone = o.sample(Streams(5, 4, noise=[2]), [2], 1)
    assert torch.equal(alone.indices[0], s.indices[2])


def test_injected_noise_has_the_declared_scale():
    o = _oracle(workers=2, batch=4, noise=Noise("gaussian", 2.0))
    s = o.sample(Streams(0, 2), range(2), 50)
    std = float(s.noise.std())
    # σ/√B = 1; 2 · 50 · d samples: the standard error of the std is ≈ 1/√(2 · 100 d) ≪ 0.05
    assert abs(std - 1.0) < 0.05
    x = o.x0().expand(50, o.dim)
    assert torch.allclose(o.grads(x, 0, 2, s) - s.noise, o._minibatch_grads(x, *o._batches(s, 0, 2)))


def test_evaluation_reports_test_accuracy_and_perplexity():
    o = _oracle()
    ev = o.evaluate(o.x0().unsqueeze(0))
    assert set(ev) == {"test_loss", "test_accuracy"} and 0.0 <= float(ev["test_accuracy"]) <= 1.0
    ds = D.load("text", context=16)
    g = NetworkOracle(build("gpt", ds.shape, 256, width=8, depth=1), ds, workers=2, batch=2, eval_samples=8)
    ev = g.evaluate(g.x0().unsqueeze(0))
    assert set(ev) == {"test_loss", "test_perplexity"}
    assert abs(float(ev["test_perplexity"]) - 256) < 64  # an untrained byte model is near uniform


# ---- SDEs on networks ---------------------------------------------------------------------------

def _updates(o, algo, k):
    """k independent updates of ``algo`` at x⁰: the repetitions axis as k fresh draws of minibatches."""
    x = o.x0().unsqueeze(0)
    s = o.sample(Streams(0, o.workers), range(o.workers), k)
    g = o.grads(x.expand(k, -1), 0, o.workers, s)
    rnd = algo.compressor.draw((o.workers, k), o.dim, torch.Generator().manual_seed(1), o.dtype)
    return x, algo.unit_update(g, rnd)


@pytest.mark.parametrize("method,kw,noise", [("dsgd", {}, None), ("dsgd", {}, Noise("gaussian", 0.05)),
                                             ("dcsgd", {"compressor": "rand-k", "ratio": 0.25}, None)])
def test_network_sde_covariance_matches_the_minibatch_updates(method, kw, noise):
    """The SDE's S(x) (per-sample-gradient factors, plus injected noise, plus Rand-k's compression) against
    the empirical covariance of K = 20,000 real updates. Each shard is smaller than sde_samples, so S is
    exact and only Monte Carlo error remains: for Gaussian-like U, E‖Ĉ − S‖²_F ≈ (‖S‖²_F + tr(S)²)/K."""
    from compsde import algorithms
    from compsde.objectives.network import MLPNetwork
    from compsde.sde.models import from_algorithm

    net = MLPNetwork(dataset="breast-cancer", hidden=[2], sde_samples=10_000)
    o = net.oracle(noise, workers=2, batch=4, dtype=torch.float64)
    assert o.sde_n == max(s.numel() for s in o.shards)  # every shard whole: S exact
    algo = algorithms.make(method, **kw)
    model = from_algorithm(o, algo, 0.1)
    k = 20_000
    x, u = _updates(o, algo, k)
    s = model.covariance(x)[0]
    se = math.sqrt((s.square().sum() + s.trace() ** 2) / k) / float(s.norm())
    err = float((torch.cov(u.T) - s).norm() / s.norm())
    assert err < 4 * se, (err, se)
    m_err = float((u.mean(0) - model.drift(x)[0]).norm())
    assert m_err < 4 * math.sqrt(float(s.trace()) / k)


def test_network_dsignsgd_drift_is_the_sign_probability():
    """E of the sign update against the SDE's drift erf(g/√(2 Var)): exact up to Monte Carlo error
    (4 standard errors) and the Gaussian approximation of a B = 64 minibatch (allowed: 2 % of ‖m‖)."""
    from compsde import algorithms
    from compsde.objectives.network import MLPNetwork
    from compsde.sde.models import from_algorithm

    o = MLPNetwork(dataset="breast-cancer", hidden=[2], sde_samples=10_000).oracle(workers=2, batch=64, dtype=torch.float64)
    algo = algorithms.make("dsignsgd")
    model = from_algorithm(o, algo, 0.01)
    assert model.noise_dim == o.dim
    k = 20_000
    x, u = _updates(o, algo, k)
    m = model.drift(x)[0]
    se = math.sqrt(float(u.var(0).sum()) / k)
    assert float((u.mean(0) - m).norm()) < 4 * se + 0.02 * float(m.norm())


def test_network_adaptive_sde_matches_the_minibatch_updates():
    """RMSprop on a network from a state v₀: x's drift ∇f/P and covariance diag(1/P) Σ̄ diag(1/P), Σ̄ the
    mean gradient's minibatch covariance (exact: every shard whole), and v's drift ρ(v − ∇f² − diag Σ̄),
    against K = 20,000 real steps (the Frobenius-norm standard error as above; β₂ = 0.9999 makes the
    dropped v-fluctuation term ~1e-4 relative)."""
    from compsde import algorithms
    from compsde.algorithms.aggregation import sum_messages
    from compsde.objectives.network import MLPNetwork
    from compsde.sde.models import AdaptiveSDE, from_algorithm

    o = MLPNetwork(dataset="breast-cancer", hidden=[2], sde_samples=10_000).oracle(workers=2, batch=4, dtype=torch.float64)
    eta, k = 0.01, 20_000
    algo = algorithms.make("rmsprop", beta2=0.9999)
    model = from_algorithm(o, algo, eta)
    assert isinstance(model, AdaptiveSDE)
    x = o.x0().unsqueeze(0)
    v0 = 0.01 + torch.rand(o.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    big = x.expand(k, -1).contiguous()
    st = algo.init(big, o.workers)
    st["server"]["v"] = v0.expand(k, -1).clone()
    g = o.grads(big, 0, o.workers, o.sample(Streams(0, o.workers), range(o.workers), k))
    out = algo.workers_step(g, {"worker": st["worker"], "ef": st["ef"]}, big, eta, None)
    new = algo.server_step(sum_messages(out.messages), o.workers, st, eta)
    u, uv = (big - new["params"]) / eta, (v0 - new["server"]["v"]) / eta
    z = torch.cat([x, v0.unsqueeze(0)], 1)
    drift, cov = model.drift(z)[0], model.covariance(z)[0]
    d = o.dim
    s = cov[:d, :d]
    se = math.sqrt((s.square().sum() + s.trace() ** 2) / k) / float(s.norm())
    assert float((torch.cov(u.T) - s).norm() / s.norm()) < 4 * se
    assert float((u.mean(0) - drift[:d]).norm()) < 4 * math.sqrt(float(s.trace()) / k)
    sv = uv.var(0)
    assert ((uv.mean(0) - drift[d:]).abs() <= 5 * (sv / k).sqrt() + 1e-12).all()


def test_network_sde_refusals_are_named():
    from compsde import algorithms
    from compsde.objectives.network import MLPNetwork
    from compsde.sde.models import from_algorithm

    net = MLPNetwork(dataset="breast-cancer", hidden=[2])
    with pytest.raises(ValueError, match="closed-form SDE.*on a network"):
        from_algorithm(net.oracle(workers=2, batch=4), algorithms.make("dcsgd", compressor="top-k", ratio=0.5), 0.1)
    o = net.oracle(Noise("student-t", 0.1, 3.0), workers=2, batch=4)
    with pytest.raises(ValueError, match="Gaussian"):
        from_algorithm(o, algorithms.make("dsignsgd"), 0.1).drift(o.x0().unsqueeze(0))
    with pytest.raises(ValueError, match="infinite variance"):
        from_algorithm(net.oracle(Noise("student-t", 0.1, 2.0), workers=2, batch=4), algorithms.make("dsgd"), 0.1)


def test_per_layer_compression_from_a_config():
    from compsde.experiments import build as config

    series = [{"method": "dcsgd", "compressor": "top-k", "k": 1, "per_layer": True, "lr": 0.1, "workers": 2, "batch": 4}]
    cfg = {"run": {"steps": 2, "repeats": 1}, "problem": {"name": "mlp", "dataset": "digits", "hidden": [8]},
           "series": series}
    exp = config.build(config.resolve(cfg))
    spec = exp.series[0]
    assert spec.label == "DCSGD top-k(k=1) per layer"
    comp = spec.algorithm.compressor
    assert comp.blocks == (8 * 64, 8, 8 * 10, 10)  # one block per parameter tensor
    # one value and its index within its tensor per tensor (k = 1): 32 + ⌈log₂ d_b⌉ bits each
    assert comp.bits(spec.oracle.dim) == sum(32 + math.ceil(math.log2(b)) for b in comp.blocks)
    bad = {**cfg, "problem": {"name": "quadratic", "dim": 4}}
    with pytest.raises(ValueError, match="per_layer = true .* problem 'quadratic'"):
        config.build(config.resolve(bad))


def test_unequal_shards_keep_their_own_covariance():
    """A Dirichlet split gives shards of different sizes: each worker's factor uses all of its own shard
    (rows beyond it are 0), so F_iᵀF_i is that shard's per-sample covariance / B exactly."""
    from compsde.objectives.network import MLPNetwork

    o = MLPNetwork(dataset="breast-cancer", hidden=[2], split="dirichlet", alpha=0.5, sde_samples=1000).oracle(
        workers=2, batch=4, dtype=torch.float64)
    sizes = [s.numel() for s in o.shards]
    assert sizes[0] != sizes[1] and o.sde_n == max(sizes)
    x = o.x0().unsqueeze(0)
    f = o.noise_factors(x)[:, 0]
    one = lambda p, a, b: o._loss_named(p, a.unsqueeze(0), b.unsqueeze(0))  # noqa: E731
    for i, n_i in enumerate(sizes):
        g = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(o.flat.unflatten(x[0]), *o._shard(i))
        g = o.flat.flatten(g, (n_i,))
        cov = torch.cov(g.T, correction=0) / o.batch
        torch.testing.assert_close(f[i].T @ f[i], cov, rtol=1e-9, atol=1e-12)
        assert not f[i, n_i:].any()


def test_bad_idx_folders_bad_oracle_arguments_and_the_callers_module(tmp_path):
    rng = np.random.default_rng(0)

    def folder(name, train_side=4, test_side=4, labels=(0, 3), n_train=6, code=0x08):
        d = tmp_path / name
        d.mkdir()
        _idx(d / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, train_side, train_side), dtype=np.uint8))
        _idx(d / "train-labels-idx1-ubyte", rng.integers(*labels, (n_train,)).astype(np.int8 if code == 0x09 else np.uint8), code=code)
        _idx(d / "t10k-images-idx3-ubyte", rng.integers(0, 256, (3, test_side, test_side), dtype=np.uint8))
        _idx(d / "t10k-labels-idx1-ubyte", rng.integers(0, 3, (3,), dtype=np.uint8))
        return d

    for d, match in [(folder("sides", test_side=3), "same size"), (folder("neg", labels=(-2, 0), code=0x09), "≥ 0"),
                     (folder("empty", n_train=0), "n ≥ 1")]:
        with pytest.raises(ValueError, match=match):
            D.load("mnist-idx", path=d)
    with pytest.raises(ValueError, match="stages"):
        build("resnet", (1, 8, 8), 10, stages=2000)
    with pytest.raises(ValueError, match="training sample"):
        D.load("teacher", samples=2, test_fraction=0.5)
    ds = D.load("digits")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).double()
    for kw, match in [({"data": None}, "Dataset"), ({"device": "foo"}, "device"), ({"dtype": torch.int64}, "dtype"),
                      ({"workers": 2**31}, "workers")]:
        with pytest.raises(ValueError, match=match):
            NetworkOracle(model, **{"data": ds, "workers": 2, "batch": 2, **kw})
    NetworkOracle(model, ds, workers=2, batch=2, dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float64  # the caller's module is left as it was
