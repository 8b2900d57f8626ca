"""Slot filling: a bidirectional LSTM tags every word of a request (many-to-many).

A tiny corpus of flight requests is generated from templates ("show flights from
new york to denver on monday morning"); every word carries a BIO slot tag
(B-from I-from O B-to ...). The tagger reads words through one of three input
layers and predicts one tag per word; padded steps are masked out of the loss.

    python examples/slot_filling.py                      # learned embeddings
    python examples/slot_filling.py --encoder trigram    # letter-trigram word hashing
    python examples/slot_filling.py --encoder one_hot    # 1-of-N words with an "other" unit
    python examples/slot_filling.py --quick              # a few seconds (also BLOCKZOO_QUICK=1)

Test sentences use two cities never seen in training: the embedding and 1-of-N
inputs see them as unknown words, the trigram input still sees their spelling.
"""

from __future__ import annotations

import argparse
import os
import random

import torch
import torch.nn.functional as F

import blockzoo
from blockzoo.recurrent import OneHotEncoder, TrigramEncoder

# Our own word lists and templates. {from}/{to} are cities, {day}, {time} slots.
CITIES = ["boston", "denver", "new york", "san francisco", "dallas", "seattle", "atlanta",
          "las vegas", "chicago", "miami", "phoenix", "salt lake city"]
HELD_OUT = ["portland", "san diego"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "tomorrow"]
TIMES = ["morning", "afternoon", "evening", "late night", "early morning"]
TEMPLATES = [
    "show flights from {from} to {to}",
    "i want to fly from {from} to {to} on {day}",
    "book a flight to {to} on {day} {time}",
    "are there any flights from {from} to {to} {day} {time}",
    "list {time} flights from {from}",
    "what is the cheapest fare to {to} from {from}",
    "i need a ticket from {from} on {day}",
    "please find me a {time} flight to {to}",
]


def make_corpus(n: int, rng: random.Random, cities: list[str]) -> list[tuple[list[str], list[str]]]:
    """n sentences as (words, BIO tags)."""
    pools = {"from": cities, "to": cities, "day": DAYS, "time": TIMES}
    out = []
    for _ in range(n):
        words: list[str] = []
        tags: list[str] = []
        for tok in rng.choice(TEMPLATES).split():
            if tok.startswith("{"):
                slot = tok[1:-1]
                value = rng.choice(pools[slot]).split()
                words += value
                tags += [f"B-{slot}"] + [f"I-{slot}"] * (len(value) - 1)
            else:
                words.append(tok)
                tags.append("O")
        out.append((words, tags))
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", choices=("embedding", "one_hot", "trigram"), default="embedding")
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small data, two epochs (for tests)")
    args = p.parse_args(argv)
    if args.quick or os.environ.get("BLOCKZOO_QUICK") == "1":
        args.n_train, args.n_test, args.epochs = 96, 32, 2
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    train_set = make_corpus(args.n_train, rng, CITIES)
    test_set = make_corpus(args.n_test, rng, CITIES[:4] + HELD_OUT)
    tag_names = sorted({t for _, tags in train_set for t in tags} | {"B-from", "I-from", "B-to", "I-to"})
    tag_id = {t: i for i, t in enumerate(tag_names)}
    train_words = sorted({w for words, _ in train_set for w in words})

    # The input layer: token ids (0 = padding, 1 = unknown) or a word encoder.
    if args.encoder == "embedding":
        word_id = {w: i + 2 for i, w in enumerate(train_words)}
        model = blockzoo.create_model("lstm_tagger", num_classes=len(tag_names), input_size=None,
                                      vocab_size=len(word_id) + 2, embed_dim=32, hidden_size=args.hidden)

        def encode(sents: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
            lengths = torch.tensor([len(s) for s in sents])
            ids = torch.zeros(len(sents), int(lengths.max()), dtype=torch.long)
            for b, s in enumerate(sents):
                ids[b, : len(s)] = torch.tensor([word_id.get(w, 1) for w in s])
            return ids, lengths
    else:
        one_hot = args.encoder == "one_hot"
        enc = OneHotEncoder(train_words) if one_hot else TrigramEncoder.from_words(train_words)
        model = blockzoo.create_model("lstm_tagger", num_classes=len(tag_names), in_chans=enc.num_features,
                                      hidden_size=args.hidden)
        encode = enc

    def batch_of(items: list[tuple[list[str], list[str]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, lengths = encode([w for w, _ in items])
        y = torch.full((len(items), int(lengths.max())), -100)  # -100: ignored by the loss
        for b, (_, tags) in enumerate(items):
            y[b, : len(tags)] = torch.tensor([tag_id[t] for t in tags])
        return x, lengths, y

    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    for epoch in range(1, args.epochs + 1):
        model.train()
        rng.shuffle(train_set)
        total = 0.0
        for i in range(0, len(train_set), args.batch):
            x, lengths, y = batch_of(train_set[i : i + args.batch])
            logits = model(x, lengths)  # (B, T, K)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
        print(f"epoch {epoch:2d}  train loss {total / len(train_set):.4f}")

    model.eval()
    with torch.no_grad():
        x, lengths, y = batch_of(test_set)
        pred = model(x, lengths).argmax(-1)
    valid = y != -100
    token_acc = ((pred == y) & valid).sum().item() / valid.sum().item()
    sent_acc = ((pred == y) | ~valid).all(1).float().mean().item()
    slot = valid & (y != tag_id["O"])
    slot_acc = ((pred == y) & slot).sum().item() / max(1, slot.sum().item())
    print(f"{args.encoder}: test token accuracy {token_acc:.3f}, slot-word accuracy {slot_acc:.3f}, "
          f"whole-sentence accuracy {sent_acc:.3f} (held-out cities: {', '.join(HELD_OUT)})")
    words, _ = test_set[0]
    print("  " + " ".join(f"{w}/{tag_names[int(t)]}" for w, t in zip(words, pred[0], strict=False)))
    return {"token_accuracy": token_acc, "slot_accuracy": slot_acc, "sentence_accuracy": sent_acc}


if __name__ == "__main__":
    main()
