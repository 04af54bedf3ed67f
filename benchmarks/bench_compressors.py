"""Speed of every compressor on one float32 row, relative to copying the row.

    python benchmarks/bench_compressors.py            # d = 10⁶ and 10⁷
    python benchmarks/bench_compressors.py --quick    # d = 10⁵ and 10⁶, fewer repeats

For each d it prints
* each compressor's compress+decompress time ``C(x, generator)`` (draw + ``apply``, the simulator's
  path), median of ``--repeats`` runs after warm-up, always on the same input tensor, and its ratio
  to ``x.clone()`` of that tensor timed in the same run (both allocate a fresh output of d floats, so
  both pay the same page faults, see environment.md); these two columns are the ones comparable with
  the figures in the README;
* for randomized compressors, the draw alone (``draw``, made before ``encode``/``decode`` and replayed
  by a receiver) and (draw + encode) relative to drawing d random integers in [0, 2²⁴) into a fresh
  int32 tensor, timed in the same run: the cost of the random numbers a stochastic quantizer needs
  (its draw is exactly that, see ``quantizers``); the goal for the quantizers is a ratio within ~2;
* the two halves the distributed path runs instead (``compsde.distributed``, the DDP hook), each
  with a draw made beforehand and its ratio to the clone: ``encode(x, rnd)`` → ``Payload`` (the
  sender) and ``decode(payload, rnd)`` (the receiver, one message), and serialising the payload,
  ``compressors.wire.Layout.pack`` into a reused byte buffer (what an all-gather sends; the old
  codec's encode included it; ``bench_distributed.py`` times the whole step);
* exact top-k (``compsde.compressors.sparsifiers.top_k_indices``) against ``torch.topk(x.abs(), k)``,
  for k = d/1000, d/100, d/10;
* the rand-k index draw (``rand_k_indices``, O(k) without replacement) against
  ``torch.randperm(d)[:k]``.
Timings on a shared 2-core machine are noisy (±10–30 %); compare ratios from the same run.

Memory: by default the script tells glibc (``mallopt``) never to return freed memory to the system,
so every temporary reuses pages already mapped: it measures arithmetic in the steady state of a
training loop. Without it, which temporaries pay page faults depends on glibc's adaptive mmap/trim
thresholds and thus on what ran before (measured: ``sign`` at d = 10⁶ 0.4 ms or 3.7 ms depending on
the order of the list), and at d = 10⁷ every 40 MB buffer pays ~10–20 ms of page faults
(environment.md). ``--fresh-memory`` keeps glibc's defaults.
"""

from __future__ import annotations

import argparse
import ctypes
from collections.abc import Callable

import torch
from timing import median_seconds

from compsde.compressors import Compressor, Payload, make, names, param_names
from compsde.compressors.sparsifiers import rand_k_indices, top_k_indices
from compsde.compressors.wire import Layout


def keep_freed_memory() -> bool:
    """glibc only: disable mmap for large blocks and heap trimming, so freed buffers are reused."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    # Both values are C ints (< 2³¹). glibc may refuse a large mmap threshold (returns 0); the trim
    # threshold alone then still keeps heap blocks (< 32 MB) mapped.
    ok_mmap = bool(libc.mallopt(ctypes.c_int(m_mmap_threshold), ctypes.c_int(1 << 30)))
    ok_trim = bool(libc.mallopt(ctypes.c_int(m_trim_threshold), ctypes.c_int((1 << 31) - 1)))
    return ok_mmap and ok_trim


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    return 1e3 * median_seconds(fn, repeats, warmup)


def build(name: str, ratio: float, levels: int) -> Compressor:
    """``name`` with ratio for the parts that take one and levels for those that take levels."""
    accepted = {p for part in name.split("+") for p in param_names(part)}
    params = {"ratio": ratio, "levels": levels}
    return make(name, **{k: v for k, v in params.items() if k in accepted})


def bench_dim(d: int, repeats: int, ratio: float, levels: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(d, generator=g)
    clone = median_ms(lambda: x.clone(), repeats)
    integers = median_ms(lambda: torch.empty(d, dtype=torch.int32).random_(0, 1 << 24, generator=g), repeats)
    print(f"\n## d = {d:.0e} (float32, one row), sparsifiers ratio = {ratio}, quantizers levels = {levels}")
    print(f"x.clone(): {clone:.2f} ms; d random integers in [0, 2^24) (int32 random_, the 'rand' baseline): {integers:.2f} ms")
    print(f"{'compressor':<32} {'ms':>9} {'× clone':>9} {'draw ms':>9} {'(d+e)/rand':>10} {'encode ms':>10} {'× clone':>9}"
          f" {'decode ms':>10} {'× clone':>9} {'pack ms':>9} {'× clone':>9}")
    for name in [*names(), "top-k+natural"]:
        c = build(name, ratio, levels)
        gen = torch.Generator().manual_seed(1)
        t = median_ms(lambda c=c, gen=gen: c(x, gen), repeats)
        # The halves, with one draw made outside the clock (a receiver replays it, it does not redraw).
        rnd = c.draw((), d, gen, x.dtype)
        tr = median_ms(lambda c=c, gen=gen: c.draw((), d, gen, x.dtype), repeats) if c.randomized else 0.0
        payload = c.encode(x, rnd)
        te = median_ms(lambda c=c, rnd=rnd: c.encode(x, rnd), repeats)
        td = median_ms(lambda c=c, payload=payload, rnd=rnd: c.decode(payload, rnd), repeats)
        layout = Layout(c.fields(d, x.dtype), 1, d, x.dtype)
        buf = torch.empty(layout.nbytes, dtype=torch.uint8)
        row = Payload({k: v.view(1, -1) for k, v in payload.fields.items()}, d, x.dtype)
        tp = median_ms(lambda layout=layout, row=row, buf=buf: layout.pack(row, out=buf), repeats)
        # The halves must give apply's message (base.py: bit for bit); a mismatch is reported, not hidden.
        same = torch.equal(c.decode(payload, rnd), c.apply(x, rnd))
        note = "" if same else "  decode(encode) != apply!"
        draw = f"{tr:9.2f} {(tr + te) / integers:10.2f}" if c.randomized else f"{'-':>9} {'-':>10}"
        print(f"{repr(c):<32} {t:9.2f} {t / clone:9.1f} {draw} {te:10.2f} {te / clone:9.1f} {td:10.2f} {td / clone:9.1f}"
              f" {tp:9.2f} {tp / clone:9.1f}{note}")

    print(f"\n{'top-k':<14} {'top_k_indices ms':>17} {'torch.topk ms':>14} {'speed-up':>9}")
    for k in (max(1, d // 1000), d // 100, d // 10):
        ours = median_ms(lambda k=k: top_k_indices(x, k), repeats)
        ref = median_ms(lambda k=k: torch.topk(x.abs(), k), repeats)
        mine, theirs = top_k_indices(x, k), torch.topk(x.abs(), k).indices.sort().values
        # float32 at d = 10⁷ has ties among |x|; the sets can then differ by which tied index is
        # kept (ours: the lowest), but the kept magnitudes must be the same multiset.
        same_set = torch.equal(mine, theirs)
        same_vals = torch.equal(x.abs()[mine].sort().values, x.abs()[theirs].sort().values)
        print(f"k = {k:<10} {ours:17.2f} {ref:14.2f} {ref / ours:9.1f}  same set: {same_set}, same values: {same_vals}")

    print(f"\n{'rand-k draw':<14} {'rand_k_indices ms':>17} {'randperm[:k] ms':>16} {'speed-up':>9}")
    for k in (max(1, d // 1000), d // 100, d // 10):
        ours = median_ms(lambda k=k: rand_k_indices((1,), d, k, g), repeats)
        ref = median_ms(lambda k=k: torch.randperm(d, generator=g)[:k], max(3, repeats // 2), warmup=1)
        print(f"k = {k:<10} {ours:17.2f} {ref:16.2f} {ref / ours:9.1f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="d = 10⁵ and 10⁶, 5 repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 9, quick 5)")
    ap.add_argument("--ratio", type=float, default=0.01, help="k/d for the sparsifiers (default 0.01)")
    ap.add_argument("--levels", type=int, default=4, help="levels for qsgd / natural dithering (default 4)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: with another process on one of the 2 cores, a 2-thread op waits "
        "for its descheduled thread and times jump in multiples of the scheduler slice)",
    )
    ap.add_argument("--fresh-memory", action="store_true", help="keep glibc's default malloc behaviour (see module doc)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    reuse = not args.fresh_memory and keep_freed_memory()
    dims = [10**5, 10**6] if args.quick else [10**6, 10**7]
    repeats = args.repeats or (5 if args.quick else 9)
    memory = "freed memory reused (mallopt)" if reuse else "glibc default malloc (temporaries may pay page faults)"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {memory}")
    for d in dims:
        bench_dim(d, repeats, args.ratio, args.levels)


if __name__ == "__main__":
    main()
