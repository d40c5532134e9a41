"""IndRNN on the adding problem (Hochreiter & Schmidhuber 1997; the long-sequence task of Li et al. 2018).

Each input step is a pair (value in [0, 1), marker); exactly two steps are marked, one in each half of the
sequence, and the target is the sum of their two values. Predicting the mean (1.0) scores MSE 1/6 ~ 0.167; a model
must carry the first marked value across half the sequence to beat that.

    python examples/adding_problem.py   # T=50: test MSE 0.018 after 600 steps (CPU, seed 0)
"""

import argparse
import time

import torch
from torch import nn

import fused_rnn

MEAN_PREDICTOR_MSE = 1 / 6  # variance of the sum of two independent U(0, 1) values


def adding_batch(batch: int, length: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (length, batch, 2), targets (batch,))."""
    values = torch.rand(length, batch, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, length, (batch,), generator=generator)
    markers = torch.zeros(length, batch)
    columns = torch.arange(batch)
    markers[first, columns] = 1.0
    markers[second, columns] = 1.0
    targets = values[first, columns] + values[second, columns]
    return torch.stack([values, markers], -1).to(device), targets.to(device)


class AddingModel(nn.Module):
    def __init__(self, hidden_size: int, num_layers: int, backend: str):
        super().__init__()
        self.rnn = fused_rnn.IndRNN(2, hidden_size, num_layers=num_layers, backend=backend)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, inputs):
        _, h_n = self.rnn(inputs)
        return self.head(h_n[-1]).squeeze(-1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = AddingModel(args.hidden_size, args.num_layers, args.backend).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    for step in range(args.steps):
        inputs, targets = adding_batch(args.batch_size, args.length, generator, args.device)
        loss = nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        # ReLU recurrences can take a large step early on; clipping keeps one batch from undoing training.
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"step {step + 1:5d}  train MSE {loss.item():.4f}")

    model.eval()
    with torch.no_grad():
        inputs, targets = adding_batch(args.test_size, args.length, generator, args.device)
        test_mse = nn.functional.mse_loss(model(inputs), targets).item()
    result = {
        "test_mse": test_mse,
        "mean_predictor_mse": MEAN_PREDICTOR_MSE,
        "seconds": time.perf_counter() - start,
    }
    print(f"test MSE {test_mse:.4f} (predicting the mean: {MEAN_PREDICTOR_MSE:.4f}); {result['seconds']:.1f} s")
    return result


if __name__ == "__main__":
    main()
