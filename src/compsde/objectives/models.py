"""Network models, plain ``torch.nn`` modules sized by a few integers: ``mlp``, ``resnet``, ``vit``, ``gpt``.

All of them are functions of their parameters only (no buffers, no running statistics), so that
``torch.func.functional_call`` with ``vmap`` over workers computes every worker's gradient in one
call: the residual network normalises with GroupNorm instead of BatchNorm, whose running statistics
would be per-worker state outside the parameters.

* ``mlp``     flatten → [Linear → GELU] × len(hidden) → Linear(classes);
* ``resnet``  a small residual CNN: 3×3 stem, ``depth`` basic blocks per stage at widths w, 2w, 4w
              (stride 2 between stages), GroupNorm, global average pooling, Linear (He et al. 2016);
* ``vit``     a small Vision Transformer: ``patch``×``patch`` patch embedding, a class token, learned
              positions, ``depth`` pre-norm blocks of ``heads``-head attention and a 4× GELU MLP
              (Dosovitskiy et al. 2021);
* ``gpt``     a small GPT-2-like decoder over bytes (vocabulary 256): token and position embeddings,
              ``depth`` pre-norm causal blocks, final LayerNorm, output head tied to the token
              embedding (Radford et al. 2019).

``build(name, sample_shape, classes, **sizes)`` makes one; ``param_count`` estimates d before any
memory is allocated.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from compsde.core.checks import check_choice, check_int, check_seed
from compsde.core.tensors import check_memory

__all__ = ["GPT", "MLP", "MODELS", "ResNet", "SIZE_KEYS", "ViT", "build", "check_sizes", "param_count"]


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: tuple[int, ...], classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU()]
            width = h
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(_groups(cout), cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(h)) + self.skip(x))


class ResNet(nn.Module):
    def __init__(self, channels: int, classes: int, width: int = 16, depth: int = 1, stages: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.GroupNorm(_groups(width), width), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = width
        for s in range(stages):
            cout = width * 2 ** s
            for b in range(depth):
                blocks.append(_Block(cin, cout, 2 if (s > 0 and b == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(-2, -1)))


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        *batch, t, w = x.shape
        q, k, v = self.qkv(x).view(*batch, t, 3, self.heads, w // self.heads).unbind(-3)
        q, k, v = (z.transpose(-3, -2) for z in (q, k, v))  # (..., heads, t, w/heads)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(w // self.heads)
        if self.causal:
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            att = att.masked_fill(mask, float("-inf"))
        out = (att.softmax(-1) @ v).transpose(-3, -2).reshape(*batch, t, w)
        return self.proj(out)


class _TransformerBlock(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = _Attention(width, heads, causal)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, channels: int, size: int, classes: int, patch: int = 4, width: int = 32, depth: int = 2,
                 heads: int = 2) -> None:
        super().__init__()
        n = (size // patch) ** 2
        self.patch = nn.Conv2d(channels, width, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, n + 1, width) * 0.02)
        self.blocks = nn.Sequential(*[_TransformerBlock(width, heads, causal=False) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.patch(x).flatten(-2).transpose(-2, -1)  # (..., patches, width)
        h = torch.cat([self.cls.expand(*h.shape[:-2], 1, h.shape[-1]), h], dim=-2) + self.pos
        return self.head(self.norm(self.blocks(h))[..., 0, :])


class GPT(nn.Module):
    def __init__(self, context: int, width: int = 32, depth: int = 2, heads: int = 2, vocab: int = 256) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(context, width) * 0.02)
        self.blocks = nn.Sequential(*[_TransformerBlock(width, heads, causal=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.tok.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        h = self.tok(x) + self.pos[: x.shape[-1]]
        return self.norm(self.blocks(h)) @ self.tok.weight.t()  # (..., T, vocab): logits, tied head


#: model → the size keys it accepts, with defaults.
SIZE_KEYS: dict[str, dict[str, Any]] = {
    "mlp": {"hidden": (64,)},
    "resnet": {"width": 16, "depth": 1, "stages": 3},
    "vit": {"patch": 4, "width": 32, "depth": 2, "heads": 2},
    "gpt": {"width": 32, "depth": 2, "heads": 2},
}
MODELS = tuple(SIZE_KEYS)


def check_sizes(name: str, sample_shape: tuple[int, ...], sizes: dict[str, Any]) -> dict[str, Any]:
    """The model's size keys with defaults filled in, checked against each other and the samples' shape."""
    unknown = set(sizes) - set(SIZE_KEYS[name])
    if unknown:
        raise ValueError(f"model {name!r} has no size key(s) {', '.join(sorted(unknown))}; its keys are "
                         f"{', '.join(SIZE_KEYS[name])}")
    s = {**SIZE_KEYS[name], **sizes}
    if name == "mlp":
        hidden = s["hidden"]
        if isinstance(hidden, int) and not isinstance(hidden, bool):
            hidden = (hidden,)
        if not isinstance(hidden, (list, tuple)) or len(hidden) > 64:
            raise ValueError(f"hidden must be a list of layer widths (at most 64 layers), got {hidden!r}")
        s["hidden"] = tuple(check_int(f"hidden[{i}]", h, min=1, max=1 << 20) for i, h in enumerate(hidden))
        return s
    for key in ("width", "depth", "heads", "patch", "stages"):
        if key in s:
            s[key] = check_int(key, s[key], min=1, max=16 if key == "stages" else 1 << 16)  # widths double per stage
    if "heads" in s and s["width"] % s["heads"]:
        raise ValueError(f"width = {s['width']} must be a multiple of heads = {s['heads']}")
    if name in ("resnet", "vit") and len(sample_shape) != 3:
        raise ValueError(f"model {name!r} takes images (channels, height, width); the dataset's samples have shape "
                         f"{sample_shape} — use an image dataset (digits, mnist, mnist-idx, cifar10) or mlp")
    if name == "vit":
        _, h, w = sample_shape
        if h != w or h % s["patch"]:
            raise ValueError(f"patch = {s['patch']} must divide the image side ({h}×{w}, square images only)")
    if name == "gpt" and len(sample_shape) != 1:
        raise ValueError("model 'gpt' takes byte windows: use dataset = 'text' or 'text-file'")
    return s


def build(name: str, sample_shape: tuple[int, ...], classes: int, *, seed: int = 0, **sizes: Any) -> nn.Module:
    """The model ``name`` for samples of ``sample_shape`` and ``classes`` outputs, initialised from ``seed``
    (float32, CPU). Unknown or invalid size keys are a ValueError naming the key."""
    check_choice("model", name, MODELS)
    check_seed("seed", seed)
    s = check_sizes(name, tuple(sample_shape), sizes)
    estimate = param_count(name, tuple(sample_shape), classes, **s)
    check_memory(4.0 * 8 * estimate, f"model {name!r} with {estimate:,} parameters (and its gradients and state)",
                 "reduce its size keys")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "mlp":
            return MLP(math.prod(sample_shape), s["hidden"], classes)
        if name == "resnet":
            return ResNet(sample_shape[0], classes, s["width"], s["depth"], s["stages"])
        if name == "vit":
            return ViT(sample_shape[0], sample_shape[1], classes, s["patch"], s["width"], s["depth"], s["heads"])
        return GPT(sample_shape[0], s["width"], s["depth"], s["heads"], vocab=classes)


def param_count(name: str, sample_shape: tuple[int, ...], classes: int, **s: Any) -> int:
    """The number of parameters d of the model, computed from its sizes (no allocation)."""
    if name == "mlp":
        widths = [math.prod(sample_shape), *s["hidden"], classes]
        return sum(a * b + b for a, b in zip(widths, widths[1:]))
    if name == "resnet":
        w, c = s["width"], sample_shape[0]
        total, cin = 9 * c * w + 2 * w, w
        for st in range(s["stages"]):
            cout = w * 2 ** st
            for b in range(s["depth"]):
                total += 9 * cin * cout + 9 * cout * cout + 4 * cout
                if cin != cout or (st > 0 and b == 0):
                    total += cin * cout + 2 * cout
                cin = cout
        return total + cin * classes + classes
    w = s["width"]
    block = 4 * w + (3 * w * w + 3 * w) + (w * w + w) + (8 * w * w + 5 * w)
    if name == "vit":
        n = (sample_shape[1] // s["patch"]) ** 2
        return (sample_shape[0] * s["patch"] ** 2 * w + w) + w + (n + 1) * w + s["depth"] * block + 2 * w + w * classes + classes
    return classes * w + sample_shape[0] * w + s["depth"] * block + 2 * w
