"""Encoder-decoder (sequence to sequence) GRU that learns to reverse a sequence of digits.

The encoder, a fused_rnn.GRU, reads the packed source digits; its final state h_n is all the decoder
knows about them. The decoder is a fused_rnn.GRUCell run one step at a time: during training it is
fed the true previous target digit (teacher forcing), at evaluation its own previous prediction
(greedy decoding), until it emits the end-of-sequence token.

    python examples/seq2seq.py [--steps 1000] [--max-length 8] [--backend torch] [--device cpu]
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

import fused_rnn

BOS, EOS, PAD = 10, 11, 12  # after the digits 0-9
VOCAB = 13


def make_batch(size: int, min_length: int, max_length: int, generator: torch.Generator):
    """Padded sources (B, T), their lengths (B,) and targets (B, T + 1): the digits reversed, then EOS."""
    lengths = torch.randint(min_length, max_length + 1, (size,), generator=generator)
    sources = [torch.randint(0, 10, (length,), generator=generator) for length in lengths.tolist()]
    targets = [torch.cat([s.flip(0), torch.tensor([EOS])]) for s in sources]
    return (
        pad_sequence(sources, batch_first=True, padding_value=PAD),
        lengths,
        pad_sequence(targets, batch_first=True, padding_value=PAD),
    )


def recurrent(name: str, backend: str, *args, **kwargs) -> nn.Module:
    """fused_rnn.<name> on `backend`, or plain torch.nn.<name> for backend "torch" (the baseline)."""
    if backend == "torch":
        return getattr(nn, name)(*args, **kwargs)
    return getattr(fused_rnn, name)(*args, backend=backend, **kwargs)


class Seq2Seq(nn.Module):
    def __init__(self, embedding_size: int, hidden_size: int, backend: str):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, embedding_size, padding_idx=PAD)
        self.encoder = recurrent("GRU", backend, embedding_size, hidden_size, batch_first=True)
        self.decoder = recurrent("GRUCell", backend, embedding_size, hidden_size)
        self.out = nn.Linear(hidden_size, VOCAB)

    def encode(self, sources, lengths):
        """Sources (B, T) padded, lengths (B,) on the CPU -> the encoder's final state (B, H)."""
        packed = pack_padded_sequence(self.embedding(sources), lengths, batch_first=True, enforce_sorted=False)
        return self.encoder(packed)[1][0]

    def forward(self, sources, lengths, targets):
        """Teacher forcing: logits (B, T', VOCAB) for targets (B, T'), each step fed the true previous token."""
        h = self.encode(sources, lengths)
        previous = torch.cat([torch.full_like(targets[:, :1], BOS), targets[:, :-1]], dim=1)
        logits = []
        for step in range(targets.shape[1]):
            h = self.decoder(self.embedding(previous[:, step]), h)
            logits.append(self.out(h))
        return torch.stack(logits, dim=1)

    @torch.no_grad()
    def greedy(self, sources, lengths, steps: int):
        """Tokens (B, steps), each step fed the model's own most likely previous token."""
        h = self.encode(sources, lengths)
        token = torch.full((sources.shape[0],), BOS, device=sources.device)
        tokens = []
        for _ in range(steps):
            h = self.decoder(self.embedding(token), h)
            token = self.out(h).argmax(-1)
            tokens.append(token)
        return torch.stack(tokens, dim=1)


def sequence_accuracy(predicted, targets) -> torch.Tensor:
    """Per sequence: were all tokens up to and including EOS right? (What follows EOS is ignored.)"""
    return ((predicted == targets) | (targets == PAD)).all(dim=1)


def show(sources, lengths, predicted) -> str:
    digits = lambda tokens: "".join(str(t) for t in tokens.tolist())
    source = digits(sources[: int(lengths)])
    emitted = predicted.tolist()
    answer = digits(predicted[: emitted.index(EOS)]) if EOS in emitted else digits(predicted) + " (no EOS)"
    return f"{source:>12} -> {answer:<12} {'right' if answer == source[::-1] else 'WRONG'}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", choices=["auto", "triton", "reference", "torch"])
    parser.add_argument("--min-length", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--embedding-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1000, help="training batches, each freshly drawn")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    test_sources, test_lengths, test_targets = make_batch(args.test_size, args.min_length, args.max_length, generator)
    model = Seq2Seq(args.embedding_size, args.hidden_size, args.backend).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # A rate decaying linearly to zero lets the last steps settle instead of bouncing around.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / args.steps)
    print(f"encoder {model.encoder}, decoder {model.decoder} on {args.device}")
    print(f"task: reverse {args.min_length}-{args.max_length} digits")

    def evaluate():
        model.eval()
        predicted = model.greedy(test_sources.to(args.device), test_lengths, test_targets.shape[1]).cpu()
        model.train()
        return predicted, sequence_accuracy(predicted, test_targets).float().mean().item()

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        sources, lengths, targets = make_batch(args.batch_size, args.min_length, args.max_length, generator)
        sources, targets = sources.to(args.device), targets.to(args.device)
        logits = model(sources, lengths, targets)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % max(args.steps // 5, 1) == 0 or step == args.steps:
            predicted, test_accuracy = evaluate()
            print(
                f"step {step:5d}: train loss {loss.item():.4f}  test sequence accuracy {test_accuracy:.3f}  "
                f"({time.perf_counter() - start:.1f} s)"
            )
    seconds = time.perf_counter() - start

    print("\ngreedy decoding of a few test sequences:")
    for i in range(min(6, args.test_size)):
        print(show(test_sources[i], test_lengths[i], predicted[i]))
    return {"train_loss": loss.item(), "test_sequence_accuracy": test_accuracy, "seconds": seconds}


if __name__ == "__main__":
    main()
