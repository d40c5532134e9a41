"""The shapes benchmarked: BENCHMARKS.md's standard configurations, a CPU-sized quick set, and sweeps."""

from dataclasses import dataclass

CELLS = ("lstm", "gru", "rnn_tanh")


@dataclass(frozen=True)
class Config:
    """One layer shape to time. Input is time-major (T, B, I), or packed when min_steps is set."""

    name: str
    batch: int
    steps: int
    """T; for packed input the longest a sequence may be."""
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    min_steps: int | None = None
    """Packed variable-length input with lengths drawn uniformly from [min_steps, steps]."""
    cells: tuple[str, ...] = ("lstm", "gru")
    """The cells this configuration runs when --cell is not given."""
    sweep_axes: tuple[str, ...] = ()
    """"batch" and/or "steps": the sweep plots this point belongs to."""

    @property
    def packed(self) -> bool:
        return self.min_steps is not None


def _fastrnns(name: str, **variant) -> Config:
    return Config(name, batch=64, steps=100, input_size=512, hidden_size=512, **variant)


STANDARD_CONFIGS = [
    _fastrnns("fastrnns", cells=CELLS),
    _fastrnns("fastrnns_2layer", num_layers=2),
    _fastrnns("fastrnns_bidir", bidirectional=True),
    Config("b1_t1024_h512", batch=1, steps=1024, input_size=512, hidden_size=512),
    Config("b16_t1024_h768", batch=16, steps=1024, input_size=768, hidden_size=768),
    Config("b64_t256_h1024", batch=64, steps=256, input_size=1024, hidden_size=1024),
    Config("b256_t256_h1024", batch=256, steps=256, input_size=1024, hidden_size=1024),
    Config("deepbench_h2048", batch=32, steps=25, input_size=2048, hidden_size=2048),
    Config("varlen", batch=64, steps=100, input_size=512, hidden_size=512, min_steps=30),
]

# Small enough that torch's CPU kernels and the reference backend finish the whole set in seconds.
QUICK_CONFIGS = [
    Config("quick_b1_t32_h64", batch=1, steps=32, input_size=64, hidden_size=64, cells=CELLS),
    Config("quick_b8_t32_h64", batch=8, steps=32, input_size=64, hidden_size=64, cells=CELLS),
    Config(
        "quick_b8_t16_h32_2layer_bidir",
        batch=8,
        steps=16,
        input_size=32,
        hidden_size=32,
        num_layers=2,
        bidirectional=True,
    ),
    Config("quick_varlen", batch=8, steps=32, input_size=64, hidden_size=64, min_steps=8),
]

CONFIGS = {config.name: config for config in STANDARD_CONFIGS + QUICK_CONFIGS}


@dataclass(frozen=True)
class Sweep:
    """Batch sizes at a fixed T, and sequence lengths at a fixed B, both at one hidden size (I = H)."""

    batches: tuple[int, ...]
    steps_for_batches: int
    steps: tuple[int, ...]
    batch_for_steps: int
    hidden_size: int

    def configs(self) -> list[Config]:
        """One Config per point; the point both sweeps share is listed once, with both axes."""
        points: dict[tuple[int, int], list[str]] = {}
        for batch in self.batches:
            points.setdefault((batch, self.steps_for_batches), []).append("batch")
        for steps in self.steps:
            points.setdefault((self.batch_for_steps, steps), []).append("steps")
        h = self.hidden_size
        return [
            Config(f"sweep_b{b}_t{t}_h{h}", b, t, h, h, cells=("lstm",), sweep_axes=tuple(axes))
            for (b, t), axes in points.items()
        ]


# The GPU sweep matches BENCHMARKS.md's cuDNN time-per-step table (H=512, T=256).
SWEEP = Sweep(
    batches=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    steps_for_batches=256,
    steps=(16, 64, 256, 1024),
    batch_for_steps=16,
    hidden_size=512,
)
QUICK_SWEEP = Sweep(batches=(1, 4, 16), steps_for_batches=32, steps=(8, 32, 128), batch_for_steps=4, hidden_size=64)
