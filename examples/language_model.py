"""Word-level language model (many-to-many) trained with truncated BPTT, then sampled (one-to-many).

embedding -> fused_rnn.LSTM (multi-layer, dropout) -> linear, optionally with the output layer tied to
the embedding, and optionally regularized by zoneout (Krueger et al. 2016: each unit of h and c keeps its
previous value with some probability at every step; fused into the Triton step kernels) and by DropConnect
on the recurrent weights (fused_rnn.WeightDrop, as in AWD-LSTM). The text is a stream of English sentences
drawn from a small grammar in which verbs agree in number with their subject, also across a relative clause
("the dogs that the farmer feeds sleep"), so a good model must carry the subject's number across several
words.

    python examples/language_model.py [--epochs 6] [--tie] [--backend torch] [--device cpu]
    python examples/language_model.py --zoneout 0.05,0.3 --weight-drop 0.3
"""

import argparse
import math
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

import fused_rnn

END = "."
# Singular and plural forms side by side, so that agreement is one lookup.
NOUNS = [("dog", "dogs"), ("cat", "cats"), ("bird", "birds"), ("child", "children"), ("farmer", "farmers"),
         ("teacher", "teachers"), ("fox", "foxes"), ("horse", "horses")]  # fmt: skip
INTRANSITIVE = [("sleeps", "sleep"), ("runs", "run"), ("sings", "sing"), ("waits", "wait"), ("laughs", "laugh")]
TRANSITIVE = [("sees", "see"), ("chases", "chase"), ("likes", "like"), ("follows", "follow"), ("watches", "watch"),
              ("feeds", "feed")]  # fmt: skip
DETERMINERS = (["a", "the", "every", "this"], ["the", "some", "many", "these"])
ADJECTIVES = ["small", "old", "quiet", "happy", "brown", "clever", "tired"]
ADVERBS = ["slowly", "quietly", "today", "again"]
PREPOSITIONS = ["near", "behind", "under", "beside"]
PLACES = ["river", "hill", "house", "garden", "barn", "road"]


def noun_phrase(rng: random.Random, plural: bool) -> list[str]:
    words = [rng.choice(DETERMINERS[plural])]
    if rng.random() < 0.4:
        words.append(rng.choice(ADJECTIVES))
    return [*words, rng.choice(NOUNS)[plural]]


def sentence(rng: random.Random) -> list[str]:
    """One sentence; the main verb's number is decided by the subject, possibly several words back."""
    plural = rng.random() < 0.5
    words = noun_phrase(rng, plural)
    if rng.random() < 0.35:
        other = rng.random() < 0.5
        words += ["that", *noun_phrase(rng, other), rng.choice(TRANSITIVE)[other]]
    if rng.random() < 0.5:
        words += [rng.choice(INTRANSITIVE)[plural]]
        if rng.random() < 0.4:
            words.append(rng.choice(ADVERBS))
    else:
        words += [rng.choice(TRANSITIVE)[plural], *noun_phrase(rng, rng.random() < 0.5)]
    if rng.random() < 0.3:
        words += [rng.choice(PREPOSITIONS), "the", rng.choice(PLACES)]
    return [*words, END]


def corpus(rng: random.Random, sentences: int) -> list[str]:
    return [word for _ in range(sentences) for word in sentence(rng)]


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(T, batch_size): the stream cut into batch_size contiguous columns, each read top to bottom."""
    steps = ids.numel() // batch_size
    return ids[: steps * batch_size].view(batch_size, steps).t().contiguous()


def recurrent(name: str, backend: str, *args, **kwargs) -> nn.Module:
    """fused_rnn.<name> on `backend`, or plain torch.nn.<name> for backend "torch" (the baseline)."""
    if backend == "torch":
        return getattr(nn, name)(*args, **kwargs)
    return getattr(fused_rnn, name)(*args, backend=backend, **kwargs)


def zoneout_rates(text: str) -> float | tuple[float, float]:
    """ "p" (h and c alike) or "p_hidden,p_cell", as fused_rnn.LSTM's zoneout takes them."""
    rates = tuple(float(rate) for rate in text.split(","))
    if len(rates) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected p or p_hidden,p_cell, got {text!r}")
    return rates[0] if len(rates) == 1 else rates


class WordLM(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        size: int,
        layers: int,
        dropout: float,
        tie: bool,
        backend: str,
        zoneout: float | tuple[float, float] = 0.0,
        weight_drop: float = 0.0,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, size)
        self.dropout = nn.Dropout(dropout)
        # torch.nn.LSTM (backend "torch") has no zoneout; fused_rnn's takes it only when asked, so the baseline runs.
        options = {"zoneout": zoneout} if zoneout else {}
        self.lstm = recurrent("LSTM", backend, size, size, layers, dropout=dropout, **options)
        if weight_drop:
            # One DropConnect mask per recurrent matrix per forward pass, shared by every step of the chunk.
            self.lstm = fused_rnn.WeightDrop(self.lstm, weight_drop)
        self.decoder = nn.Linear(size, vocab_size)
        if tie:
            # Press & Wolf (2017): one matrix for the input and output word vectors saves
            # vocab_size * size parameters and regularises; it pays off most with a large vocabulary.
            self.decoder.weight = self.embedding.weight

    def forward(self, tokens, state=None):
        """tokens (T, B) -> logits (T, B, vocab_size) and the LSTM's final (h, c)."""
        output, state = self.lstm(self.dropout(self.embedding(tokens)), state)
        return self.decoder(self.dropout(output)), state


def run_epoch(model, data, bptt, optimizer=None, clip=math.inf):
    """Mean cross-entropy per token over `data` (T, B); trains when an optimizer is given."""
    model.train(optimizer is not None)
    total, count, state = 0.0, 0, None
    with torch.set_grad_enabled(optimizer is not None):
        for start in range(0, data.shape[0] - 1, bptt):
            inputs = data[start : start + bptt]
            targets = data[start + 1 : start + 1 + len(inputs)]
            inputs = inputs[: len(targets)]
            if state is not None:
                # The state carries the context across chunk boundaries; detaching it stops
                # backpropagation there, which is what makes the BPTT truncated.
                state = tuple(s.detach() for s in state)
            logits, state = model(inputs, state)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            if optimizer is not None:
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
            total += loss.item() * targets.numel()
            count += targets.numel()
    return total / count


@torch.no_grad()
def generate(model, vocab, sentences: int, temperature: float, device, max_words: int = 200) -> str:
    """Sentences sampled one word at a time, each word fed back as the next input, starting after an END."""
    model.eval()
    token, state, words = torch.tensor([[vocab.index(END)]], device=device), None, []
    while words.count(END) < sentences and len(words) < max_words:
        logits, state = model(token, state)
        token = torch.multinomial(F.softmax(logits[-1, 0] / temperature, dim=-1), 1).view(1, 1)
        words.append(vocab[token.item()])
    return " ".join(words).replace(" .", ".").replace(". ", ".\n")


def unigram_perplexity(train_ids: torch.Tensor, valid_ids: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of word frequencies alone (add-one smoothed): what ignoring context achieves."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1
    return math.exp(-(counts / counts.sum()).log()[valid_ids].mean().item())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", choices=["auto", "triton", "reference", "torch"])
    parser.add_argument("--sentences", type=int, default=3000, help="training sentences (validation: a tenth)")
    parser.add_argument("--hidden-size", type=int, default=128, help="embedding and LSTM size")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--tie", action="store_true", help="tie the output layer's weight to the embedding")
    parser.add_argument(
        "--zoneout",
        type=zoneout_rates,
        default=0.0,
        help="zoneout probability of the LSTM's h and c, or p_hidden,p_cell (Krueger et al. used 0.05,0.5)",
    )
    parser.add_argument("--weight-drop", type=float, default=0.0, help="DropConnect probability on W_hh")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=35, help="time steps per truncated-BPTT chunk")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--clip", type=float, default=0.5, help="max gradient norm")
    parser.add_argument("--generate", type=int, default=5, help="sentences to sample after training")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.zoneout and args.backend == "torch":
        parser.error("--zoneout needs a fused_rnn backend: torch.nn.LSTM has no zoneout")

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    train_words, valid_words = corpus(rng, args.sentences), corpus(rng, max(args.sentences // 10, 1))
    vocab = sorted(set(train_words) | set(valid_words))
    index = {word: i for i, word in enumerate(vocab)}
    train_ids, valid_ids = (torch.tensor([index[w] for w in words]) for words in (train_words, valid_words))
    train = batchify(train_ids, args.batch_size).to(args.device)
    valid = batchify(valid_ids, min(args.batch_size, 10)).to(args.device)
    baseline = unigram_perplexity(train_ids, valid_ids, len(vocab))
    print(f"{len(train_words)} training words, {len(valid_words)} validation words, vocabulary {len(vocab)}")
    print(f"unigram perplexity (no context): {baseline:.1f}")

    model = WordLM(
        len(vocab),
        args.hidden_size,
        args.layers,
        args.dropout,
        args.tie,
        args.backend,
        args.zoneout,
        args.weight_drop,
    ).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"model: {model.lstm} on {args.device}, {sum(p.numel() for p in model.parameters())} parameters")
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_loss = run_epoch(model, train, args.bptt, optimizer, args.clip)
        seconds = time.perf_counter() - start
        valid_loss = run_epoch(model, valid, args.bptt)
        print(
            f"epoch {epoch}: train ppl {math.exp(train_loss):6.2f}  valid ppl {math.exp(valid_loss):6.2f}  "
            f"({seconds:.1f} s)"
        )

    sample = generate(model, vocab, args.generate, args.temperature, args.device)
    print(f"\nsample (temperature {args.temperature}):\n{sample}")
    return {
        "vocab_size": len(vocab),
        "recurrent_layer": repr(model.lstm),
        "unigram_perplexity": baseline,
        "train_perplexity": math.exp(train_loss),
        "valid_perplexity": math.exp(valid_loss),
        "epoch_seconds": seconds,
        "sample": sample,
    }


if __name__ == "__main__":
    main()
