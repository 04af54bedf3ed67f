"""Algorithm cases shared by the tests that compare execution paths (simulator vs reference loop,
simulator vs torch.distributed): every recipe, every compressor family, error feedback around biased
and unbiased compressors, the worker- and server-side transforms, and the single-node optimizers (on a
quadratic the game methods step along ∇f)."""

CASES = [
    ("dsgd", {}),
    ("dcsgd", {"compressor": "rand-k", "k": 3}),
    ("dcsgd", {"compressor": "rand-k", "k": 3, "shared": True}),
    ("dcsgd", {"compressor": "rand-k-unscaled", "ratio": 0.5}),
    ("dcsgd", {"compressor": "top-k", "k": 2}),
    ("dcsgd", {"compressor": "natural"}),
    ("dcsgd", {"compressor": "qsgd", "levels": 2}),
    ("dcsgd", {"compressor": "natural-dithering", "levels": 3}),
    ("dcsgd", {"compressor": "scaled-sign"}),
    ("dcsgd", {"compressor": "top-k+natural", "k": 3}),
    ("dsignsgd", {}),
    ("dsignsgd-majority", {}),
    ("ef", {"compressor": "top-k", "k": 1}),
    ("ef", {"compressor": "scaled-sign"}),
    ("dcsgd", {"compressor": "rand-k", "k": 2, "normalize": True}),
    ("dcsgd", {"compressor": "rand-k", "k": 3, "worker": {"momentum": 0.9}}),
    ("dsignsgd", {"worker": {"momentum": 0.9, "weight_decay": 0.01}}),
    ("ef", {"compressor": "scaled-sign", "server": {"momentum": 0.5, "nesterov": True}}),
    ("dsgd", {"server": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}}),
    ("signsgd", {}),
    ("signum", {"beta": 0.8}),
    ("rmsprop", {"weight_decay": 0.01}),
    ("rmspropw", {"beta2": 0.9}),
    ("adam", {"beta1": 0.8, "weight_decay": 0.01}),
    ("adamw", {}),
    ("sam", {"rho": 0.1}),
    ("usam", {"rho": 0.1}),
    ("sgda", {}),
    ("seg", {}),
    ("seg", {"rho": 0.2}),
    ("shgd", {}),
]


