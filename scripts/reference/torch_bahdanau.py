"""PyTorch reference of qkv's Bahdanau model (models/bahdanau/bahdanau.hpp), to check that qkv
learns as PyTorch does and to try architectural variants on the same batches.

    # 1. qkv writes its initial weights and the batches and losses of its first N steps:
    build/examples/qkv-train --model bahdanau --data ../shared/data/fra-eng.tsv --out /tmp/run \\
        --embed 64 --hidden 128 --layers 1 --dropout 0 --trace-steps 200 --epochs 1
    # 2. PyTorch replays them from the same weights and prints both losses step by step:
    /usr/bin/python3 scripts/reference/torch_bahdanau.py /tmp/run
    # 3. or trains a variant on the same batches from its own initialisation:
    /usr/bin/python3 scripts/reference/torch_bahdanau.py /tmp/run --fresh --decoder-hidden 256 --readout deep

The model (the same names as qkv's parameters, so qkv's weights load by name):
  source_embedding (row 0 = <pad>, zero) -> GRU (bidirectional) over each source's length
  -> decoder state s_0 = tanh(bridge [h_fwd; h_bwd]) (one slice per decoder layer)
  per step: a_t = masked softmax of v' tanh(W_q s_{t-1} + W_k k_j); c_t = sum_j a_t[j] k_j
            s_t = GRUCell([E y_{t-1}; c_t], s_{t-1})            (input feeding)
            logits = output(s_t)                  (readout state, d2l)
                   = output([s_t; c_t; E y_{t-1}]) (readout deep, Bahdanau 2015 / textbook)
Loss: cross-entropy averaged over non-pad labels; Adam (lr 1e-3, betas 0.9/0.999, eps 1e-8),
global gradient-norm clipping at 1 — qkv-train's defaults. Dropout is not modelled (trace
with --dropout 0). Never run by CI: it needs torch (/usr/bin/python3 has it).
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

_NUMPY = {"F64": np.float64, "F32": np.float32, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    """name -> torch tensor, for the dtypes qkv writes (qkv's CRCs in the metadata are ignored)."""
    with open(path, "rb") as f:
        data = f.read()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    body = data[8 + size :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        array = np.frombuffer(body[begin:end], dtype=_NUMPY[entry["dtype"]]).reshape(entry["shape"])
        tensors[name] = torch.from_numpy(array.copy())
    return tensors


class AdditiveAttention(nn.Module):
    def __init__(self, query_size, key_size, hidden_size):
        super().__init__()
        bound = lambda n: 1.0 / n**0.5
        self.W_q = nn.Parameter(torch.empty(hidden_size, query_size).uniform_(-bound(query_size), bound(query_size)))
        self.W_k = nn.Parameter(torch.empty(hidden_size, key_size).uniform_(-bound(key_size), bound(key_size)))
        self.v = nn.Parameter(torch.empty(hidden_size).uniform_(-bound(hidden_size), bound(hidden_size)))


class Bahdanau(nn.Module):
    def __init__(self, source_vocab, target_vocab, embed, hidden, attention, layers, decoder_hidden, readout):
        super().__init__()
        self.layers, self.decoder_hidden, self.readout = layers, decoder_hidden, readout
        keys = 2 * hidden
        self.source_embedding = nn.Embedding(source_vocab, embed, padding_idx=0)
        self.encoder = nn.GRU(embed, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(keys, layers * decoder_hidden)
        self.attention = AdditiveAttention(decoder_hidden, keys, attention)
        self.target_embedding = nn.Embedding(target_vocab, embed, padding_idx=0)
        self.decoder = nn.ModuleList(
            [nn.GRUCell(embed + keys if l == 0 else decoder_hidden, decoder_hidden) for l in range(layers)])
        readout_size = decoder_hidden + (keys + embed if readout == "deep" else 0)
        self.output = nn.Linear(readout_size, target_vocab)

    def forward(self, source, source_lengths, target_input):
        batch, steps = target_input.shape
        embedded = self.source_embedding(source)  # [B, S, E]
        packed = nn.utils.rnn.pack_padded_sequence(embedded, source_lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        outputs, finals = self.encoder(packed)
        keys, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=source.shape[1])  # [B, S, 2H]
        summary = torch.cat([finals[-2], finals[-1]], dim=1)  # [B, 2H], top layer forward then backward
        state = list(torch.tanh(self.bridge(summary)).split(self.decoder_hidden, dim=1))  # L x [B, Hd]
        projected = keys @ self.attention.W_k.T  # [B, S, A]
        allowed = torch.arange(source.shape[1])[None, :] < source_lengths[:, None]  # [B, S]
        targets = self.target_embedding(target_input)  # [B, T, E]
        readouts = []
        for t in range(steps):
            scores = torch.tanh(projected + (state[-1] @ self.attention.W_q.T)[:, None, :]) @ self.attention.v  # [B, S]
            weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=1)
            context = (weights[:, :, None] * keys).sum(1)  # [B, 2H]
            x = torch.cat([targets[:, t], context], dim=1)
            for l, cell in enumerate(self.decoder):
                state[l] = cell(x, state[l])
                x = state[l]
            readouts.append(torch.cat([state[-1], context, targets[:, t]], 1) if self.readout == "deep" else state[-1])
        return self.output(torch.stack(readouts, 1))  # [B, T, V]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a qkv-train --out directory written with --trace-steps")
    parser.add_argument("--fresh", action="store_true", help="PyTorch's own initialisation, not qkv's weights")
    parser.add_argument("--decoder-hidden", type=int, default=None, help="decoder width (default: the run's)")
    parser.add_argument("--readout", choices=["state", "deep"], default=None, help="default: the run's")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--every", type=int, default=10, help="print every this many steps")
    parser.add_argument("--json", help="write the per-step losses here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    config = json.load(open(os.path.join(args.run, "config.json")))
    model_config = config["model"]["config"] if "model" in config else config["config"]
    assert model_config["encoder_layers"] == model_config["decoder_layers"], "one layer count on both sides"
    assert model_config["bidirectional"], "the reference models the bidirectional encoder"
    weights = read_safetensors(os.path.join(args.run, "trace", "initial.safetensors"))
    trace = read_safetensors(os.path.join(args.run, "trace", "steps.safetensors"))
    qkv_losses = trace["loss"].double().tolist()
    hidden = model_config["hidden_size"]
    # Configs from before these fields: a decoder as wide as the encoder, read by its state.
    decoder_hidden = args.decoder_hidden or model_config.get("decoder_hidden_size", 0) or hidden
    readout = args.readout or model_config.get("readout", "state")
    if args.fresh is False and (decoder_hidden != (model_config.get("decoder_hidden_size", 0) or hidden)
                                or readout != model_config.get("readout", "state")):
        sys.exit("qkv's weights are of the run's architecture: a different one needs --fresh")
    model = Bahdanau(model_config["source_vocab_size"], model_config["target_vocab_size"], model_config["embed_size"],
                     hidden, model_config["attention_size"], model_config["encoder_layers"],
                     decoder_hidden, readout)
    if not args.fresh:
        state = {name: tensor.float() for name, tensor in weights.items()}
        missing = set(model.state_dict()) ^ set(state)
        assert not missing, f"names differ between qkv and the reference: {sorted(missing)}"
        model.load_state_dict(state)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses = []
    start = time.time()
    print(f"{'step':>5} {'qkv':>9} {'torch':>9} {'diff':>10}")
    for step in range(1, len(qkv_losses) + 1):
        batch = {k: trace[f"{step}.{k}"] for k in ("source", "source_lengths", "target_input", "target_output")}
        logits = model(batch["source"], batch["source_lengths"], batch["target_input"])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["target_output"].reshape(-1), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        if args.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        losses.append(loss.item())
        if step % args.every == 0 or step == 1:
            q = qkv_losses[step - 1]
            print(f"{step:5d} {q:9.4f} {losses[-1]:9.4f} {losses[-1] - q:+10.2e}", flush=True)
    window = min(50, len(losses))
    print(f"mean of the last {window} steps: qkv {np.mean(qkv_losses[-window:]):.4f}, "
          f"torch {np.mean(losses[-window:]):.4f}; {time.time() - start:.0f} s")
    if args.json:
        json.dump({"qkv": qkv_losses, "torch": losses, "args": vars(args)}, open(args.json, "w"))


if __name__ == "__main__":
    sys.exit(main())
