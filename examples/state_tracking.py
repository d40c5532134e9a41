"""sLSTM on parity, the state-tracking task FlashRNN's and xLSTM's papers use to motivate recurrent networks.

Each input is a string of bits; the target at every step is the parity of the ones seen so far (the running XOR).
A model must carry one bit of state and flip it on every 1: recurrent networks can, while transformers and
linear-recurrence (state-space) models without a nonlinear state transition cannot track this for lengths beyond
those they were trained on (Delétang et al. 2023, "Neural Networks and the Chomsky Hierarchy"; Merrill et al. 2024,
"The Illusion of State in State-Space Models"). The sLSTM learns it from short strings and keeps it on strings
several times longer.

    python examples/state_tracking.py --threads 1   # lengths 1-20 in training: accuracy 1.00 up to length 80
"""

import argparse
import time

import torch
from torch import nn

import fused_rnn


def parity_batch(batch: int, length: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(one-hot bits (length, batch, 2), running parity (length, batch) as class indices)."""
    bits = torch.randint(0, 2, (length, batch), generator=generator)
    return nn.functional.one_hot(bits, 2).float().to(device), (bits.cumsum(0) % 2).to(device)


class ParityModel(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, backend: str):
        super().__init__()
        self.rnn = fused_rnn.sLSTM(2, hidden_size, num_heads=num_heads, backend=backend)
        self.head = nn.Linear(hidden_size, 2)

    def forward(self, bits):
        output, _ = self.rnn(bits)
        return self.head(output)  # (length, batch, 2)


def accuracy(model: nn.Module, length: int, count: int, generator: torch.Generator, device) -> float:
    """Fraction of strings of this length whose parity is right at EVERY step."""
    with torch.no_grad():
        bits, parity = parity_batch(count, length, generator, device)
        return (model(bits).argmax(-1) == parity).all(0).float().mean().item()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-length", type=int, default=20, help="training strings have 1 to this many bits")
    parser.add_argument("--test-lengths", type=int, nargs="+", default=[20, 40, 80])
    parser.add_argument("--hidden-size", type=int, default=16)
    parser.add_argument("--num-heads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (a model this small runs best on one)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = ParityModel(args.hidden_size, args.num_heads, args.backend).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    for step in range(args.steps):
        length = int(torch.randint(1, args.train_length + 1, (), generator=generator))
        bits, parity = parity_batch(args.batch_size, length, generator, args.device)
        loss = nn.functional.cross_entropy(model(bits).flatten(0, 1), parity.flatten())
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"step {step + 1:5d}  train loss {loss.item():.4f}")

    model.eval()
    accuracies = {
        length: accuracy(model, length, args.test_size, generator, args.device) for length in args.test_lengths
    }
    result = {"accuracy": accuracies, "seconds": time.perf_counter() - start}
    for length, value in accuracies.items():
        print(f"length {length:4d}: {value:.3f} of strings right at every step (chance: 2**-{length})")
    print(f"{result['seconds']:.1f} s")
    return result


if __name__ == "__main__":
    main()
