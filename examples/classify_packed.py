"""Many-to-one classification of variable-length sequences, packed, with a bidirectional fused_rnn.GRU or LSTM.

Each sequence is 5 to 40 random digits; the label says whether it ends with the digit it starts with.
The batch is padded to its longest sequence and packed with pack_padded_sequence(enforce_sorted=False),
so each sequence is read only over its own length: the forward direction's final state h_n is taken
right after the sequence's true last digit and the backward direction's right after its first digit.
Concatenated, they hold both ends of the sequence, whatever its length.

    python examples/classify_packed.py [--cell LSTM] [--epochs 3] [--backend torch] [--device cpu]
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

import fused_rnn

DIGITS = 10


def make_dataset(size: int, min_length: int, max_length: int, generator: torch.Generator):
    """Padded digits (size, max_length), lengths (size,) and labels (size,), half of them positive."""
    lengths = torch.randint(min_length, max_length + 1, (size,), generator=generator)
    labels = torch.randint(0, 2, (size,), generator=generator)
    sequences = []
    for length, same in zip(lengths.tolist(), labels.tolist()):
        digits = torch.randint(0, DIGITS, (length,), generator=generator)
        shift = 0 if same else torch.randint(1, DIGITS, (), generator=generator).item()
        digits[-1] = (digits[0] + shift) % DIGITS
        sequences.append(digits)
    # The padding value is never read: packing stops each sequence at its own length.
    return pad_sequence(sequences, batch_first=True), lengths, labels


def recurrent(name: str, backend: str, *args, **kwargs) -> nn.Module:
    """fused_rnn.<name> on `backend`, or plain torch.nn.<name> for backend "torch" (the baseline)."""
    if backend == "torch":
        return getattr(nn, name)(*args, **kwargs)
    return getattr(fused_rnn, name)(*args, backend=backend, **kwargs)


class PackedClassifier(nn.Module):
    def __init__(self, cell: str, embedding_size: int, hidden_size: int, classes: int, backend: str):
        super().__init__()
        self.embedding = nn.Embedding(DIGITS, embedding_size)
        self.rnn = recurrent(cell, backend, embedding_size, hidden_size, batch_first=True, bidirectional=True)
        # A hidden layer, because comparing two digits is not a linear function of their features.
        self.head = nn.Sequential(nn.Linear(2 * hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, classes))

    def forward(self, digits, lengths):
        """digits (B, T) padded, lengths (B,) on the CPU -> logits (B, classes)."""
        packed = pack_padded_sequence(self.embedding(digits), lengths, batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)
        h_n = state[0] if isinstance(state, tuple) else state  # an LSTM returns (h_n, c_n)
        # h_n is (directions, B, H) in the batch's original order: forward then backward direction.
        return self.head(torch.cat([h_n[0], h_n[1]], dim=-1))


def batches(dataset, batch_size: int, shuffle: bool):
    digits, lengths, labels = dataset
    order = torch.randperm(len(labels)) if shuffle else torch.arange(len(labels))
    for start in range(0, len(labels), batch_size):
        index = order[start : start + batch_size]
        batch_lengths = lengths[index]
        yield digits[index, : batch_lengths.max()], batch_lengths, labels[index]


@torch.no_grad()
def accuracy(model, dataset, batch_size: int, device) -> float:
    model.eval()
    correct = 0
    for digits, lengths, labels in batches(dataset, batch_size, shuffle=False):
        correct += (model(digits.to(device), lengths).argmax(-1).cpu() == labels).sum().item()
    return correct / len(dataset[2])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", choices=["auto", "triton", "reference", "torch"])
    parser.add_argument("--cell", default="GRU", choices=["GRU", "LSTM"])
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--min-length", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=40)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--embedding-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train = make_dataset(args.train_size, args.min_length, args.max_length, generator)
    test = make_dataset(args.test_size, args.min_length, args.max_length, generator)
    chance = max(test[2].float().mean().item(), 1 - test[2].float().mean().item())
    lengths = f"{args.min_length}-{args.max_length}"
    print(f"{args.train_size} training and {args.test_size} test sequences of {lengths} digits")
    print(f"chance (majority class) accuracy: {chance:.3f}")

    model = PackedClassifier(args.cell, args.embedding_size, args.hidden_size, 2, args.backend).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"model: {model.rnn} on {args.device}")
    for epoch in range(1, args.epochs + 1):
        model.train()
        start, total, count = time.perf_counter(), 0.0, 0
        for digits, lengths, labels in batches(train, args.batch_size, shuffle=True):
            loss = F.cross_entropy(model(digits.to(args.device), lengths), labels.to(args.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(labels), count + len(labels)
        seconds = time.perf_counter() - start
        test_accuracy = accuracy(model, test, args.batch_size, args.device)
        print(f"epoch {epoch}: train loss {total / count:.4f}  test accuracy {test_accuracy:.3f}  ({seconds:.1f} s)")
    return {"train_loss": total / count, "test_accuracy": test_accuracy, "chance": chance, "epoch_seconds": seconds}


if __name__ == "__main__":
    main()
