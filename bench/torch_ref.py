#!/usr/bin/python3
"""PyTorch reference for qkv-bench: the same three configurations, the same step, the same JSON.

    /usr/bin/python3 bench/torch_ref.py --config transformer-tiny --threads 1 --steps 20 --warmup 3
    /usr/bin/python3 bench/torch_ref.py --config transformer-tiny --decode --steps 5
    /usr/bin/python3 bench/torch_ref.py --config bahdanau --decode --beam 4 --batch 1

Each model is built to compute what qkv's model computes (see bench/README.md), from stock
torch modules: nn.TransformerEncoder/Decoder (post-LN, no final norm, as qkv's post-LN stacks),
nn.GRU and nn.GRUCell. A step is forward, cross-entropy (ignore_index 0), zero_grad, backward,
clip_grad_norm_(1.0), Adam(lr 1e-3, betas (0.9, 0.98), eps 1e-9).

Debian's torch calls the system OpenBLAS, whose thread pool torch.set_num_threads does not
reach, so its thread count is set through ctypes as well.
"""
import argparse
import ctypes
import json
import math
import resource
import sys
import time

try:
    import torch
except ImportError:  # a fresh machine: the comparison needs Debian's PyTorch, not qkv's build or tests
    sys.exit("torch_ref.py: PyTorch is not installed for " + sys.executable +
             "; on Debian 12: apt-get install python3-torch, and run this (or bench/compare.py) with "
             "/usr/bin/python3, the interpreter it installs into (PyTorch 1.13, the version bench/README.md measured)")
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    "transformer-tiny": dict(kind="transformer", vocab=64, d_model=64, heads=4, encoder_layers=2, decoder_layers=2,
                             ff=256, dropout=0.1, batch=64, source_length=24, target_length=24),
    "transformer-small": dict(kind="transformer", vocab=512, d_model=256, heads=8, encoder_layers=3, decoder_layers=3,
                              ff=1024, dropout=0.1, batch=32, source_length=32, target_length=32),
    "bahdanau": dict(kind="bahdanau", vocab=64, embed=64, hidden=128, attention=128, batch=64, source_length=20,
                     target_length=20),
}


def set_openblas_threads(threads):
    """openblas_set_num_threads on the OpenBLAS this process loaded (found in /proc/self/maps)."""
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "openblas" in line and line.split()[-1].startswith("/")})
    for path in paths:
        library = ctypes.CDLL(path)
        if hasattr(library, "openblas_set_num_threads"):
            library.openblas_set_num_threads(threads)
            return path
    raise RuntimeError("torch_ref: no OpenBLAS with openblas_set_num_threads is loaded")


def forward_flops(c):
    """Forward matmul FLOPs (2·M·N·K each, attention products included); qkv_bench.cpp has the same."""
    B, S, T, V = c["batch"], c["source_length"], c["target_length"], c["vocab"]
    if c["kind"] == "transformer":
        D, Fd = c["d_model"], c["ff"]
        encoder_layer = 2 * B * S * D * 3 * D + 2 * (2 * B * S * S * D) + 2 * B * S * D * D + 2 * (2 * B * S * D * Fd)
        self_attention = 2 * B * T * D * 3 * D + 2 * (2 * B * T * T * D) + 2 * B * T * D * D
        cross_attention = 2 * B * T * D * D + 2 * B * S * D * 2 * D + 2 * (2 * B * T * S * D) + 2 * B * T * D * D
        decoder_layer = self_attention + cross_attention + 2 * (2 * B * T * D * Fd)
        return c["encoder_layers"] * encoder_layer + c["decoder_layers"] * decoder_layer + 2 * B * T * D * V
    E, H, A = c["embed"], c["hidden"], c["attention"]
    encoder = S * (2 * B * E * 3 * H + 2 * B * H * 3 * H)
    keys = 2 * B * S * H * A
    attention = 2 * B * H * A + 2 * B * S * A + 2 * B * S * H
    cell = 2 * B * (E + H) * 3 * H + 2 * B * H * 3 * H
    return encoder + keys + T * (attention + cell) + 2 * B * T * H * V


def sinusoidal_table(length, d_model):
    """qkv's SinusoidalPositionalEncoding: sin on even, cos on odd dims, 10000^(2i/d)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)
    return table


class Transformer(nn.Module):
    """qkv's TransformerModel: embeddings · √d + sinusoidal positions, dropout, post-LN stacks
    without a final norm, Linear to the vocabulary."""

    def __init__(self, c):
        super().__init__()
        D = c["d_model"]
        self.scale = math.sqrt(D)
        self.source_embedding = nn.Embedding(c["vocab"], D, padding_idx=0)
        self.target_embedding = nn.Embedding(c["vocab"], D, padding_idx=0)
        self.register_buffer("positions", sinusoidal_table(256, D))
        self.dropout = nn.Dropout(c["dropout"])

        def layer(kind):
            return kind(D, c["heads"], c["ff"], c["dropout"], activation="relu", batch_first=True, norm_first=False)

        self.encoder = nn.TransformerEncoder(layer(nn.TransformerEncoderLayer), c["encoder_layers"], norm=None,
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(layer(nn.TransformerDecoderLayer), c["decoder_layers"], norm=None)
        self.output = nn.Linear(D, c["vocab"])

    def embed(self, embedding, tokens):
        return self.dropout(embedding(tokens) * self.scale + self.positions[: tokens.shape[1]])

    def encode(self, source, source_padding):
        return self.encoder(self.embed(self.source_embedding, source), src_key_padding_mask=source_padding)

    def decode(self, memory, source_padding, target_input):
        T = target_input.shape[1]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # True = not allowed
        y = self.decoder(self.embed(self.target_embedding, target_input), memory, tgt_mask=causal,
                         memory_key_padding_mask=source_padding)
        return self.output(y)

    def forward(self, source, source_padding, target_input):
        return self.decode(self.encode(source, source_padding), source_padding, target_input)


class Bahdanau(nn.Module):
    """qkv's BahdanauModel with bidirectional=false, one layer each side, no dropout: the
    encoder's final state starts the decoder (no bridge); each step scores vᵀ tanh(W_q s + W_k k)
    with W_k k computed once, masks and softmaxes over the source, takes the context, and runs a
    GRUCell on [embedding(y_prev); context] (input feeding); one Linear over all steps' states."""

    def __init__(self, c):
        super().__init__()
        E, H, A, V = c["embed"], c["hidden"], c["attention"], c["vocab"]
        self.source_embedding = nn.Embedding(V, E, padding_idx=0)
        self.encoder = nn.GRU(E, H, batch_first=True)
        self.W_q = nn.Linear(H, A, bias=False)
        self.W_k = nn.Linear(H, A, bias=False)
        self.v = nn.Linear(A, 1, bias=False)
        self.target_embedding = nn.Embedding(V, E, padding_idx=0)
        self.decoder = nn.GRUCell(E + H, H)
        self.output = nn.Linear(H, V)

    def forward(self, source, source_padding, target_input):
        keys, h = self.encoder(self.source_embedding(source))  # [B, S, H], [1, B, H]
        h = h[0]
        projected_keys = self.W_k(keys)  # [B, S, A]
        embedded = self.target_embedding(target_input)  # [B, T, E]
        states = []
        for t in range(target_input.shape[1]):
            features = torch.tanh(self.W_q(h)[:, None, :] + projected_keys)  # [B, S, A]
            scores = self.v(features).squeeze(-1).masked_fill(source_padding, float("-inf"))  # [B, S]
            weights = torch.softmax(scores, dim=-1)
            context = torch.bmm(weights[:, None, :], keys).squeeze(1)  # [B, H]
            h = self.decoder(torch.cat([embedded[:, t], context], dim=1), h)
            states.append(h)
        return self.output(torch.stack(states, dim=1))  # [B, T, V]

    def encode(self, source):
        keys, h = self.encoder(self.source_embedding(source))  # [B, S, H], [1, B, H]
        return keys, self.W_k(keys), h[0]

    def step(self, keys, projected_keys, source_padding, h, previous):
        """One decoding step from the previous tokens [B]: the new state [B, H] and logits [B, V]."""
        features = torch.tanh(self.W_q(h)[:, None, :] + projected_keys)  # [B, S, A]
        scores = self.v(features).squeeze(-1).masked_fill(source_padding, float("-inf"))  # [B, S]
        context = torch.bmm(torch.softmax(scores, dim=-1)[:, None, :], keys).squeeze(1)  # [B, H]
        h = self.decoder(torch.cat([self.target_embedding(previous), context], dim=1), h)
        return h, self.output(h)


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def random_tokens(generator, rows, columns, vocab):
    return torch.randint(4, vocab, (rows, columns), generator=generator)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="transformer-tiny", choices=sorted(CONFIGS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--decode", action="store_true",
                        help="time decoding (the usual nn.Transformer loop over the growing prefix)")
    parser.add_argument("--decode-length", type=int, default=24)
    parser.add_argument("--beam", type=int, default=1, help="with --decode: hypotheses per sentence (1 = greedy)")
    parser.add_argument("--batch", type=int, default=0, help="sentences per batch instead of the config's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sgemm", action="store_true", help="time torch.mm on 1024x1024 float32 matrices instead")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    openblas_path = set_openblas_threads(args.threads)
    if args.sgemm:
        a, b = torch.rand(1024, 1024), torch.rand(1024, 1024)
        for _ in range(2):
            torch.mm(a, b)
        times = []
        for _ in range(10):
            start = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - start)
        corename = ctypes.CDLL(openblas_path).openblas_get_corename
        corename.restype = ctypes.c_char_p
        print(json.dumps({"config": "sgemm-1024", "threads": args.threads, "kernel": corename().decode(),
                          "gflops_per_s": 2 * 1024 ** 3 / median(times) / 1e9}))
        return
    torch.manual_seed(args.seed)
    c = dict(CONFIGS[args.config])
    if args.batch > 0:
        c["batch"] = args.batch
    if args.beam > 1 and not args.decode:
        raise SystemExit("torch_ref: --beam needs --decode")
    model = Transformer(c) if c["kind"] == "transformer" else Bahdanau(c)
    params = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(args.seed + 1)
    B = c["batch"]
    source = random_tokens(generator, B, c["source_length"], c["vocab"])
    source_padding = torch.zeros(B, c["source_length"], dtype=torch.bool)  # True = padding; none here
    result = {"config": args.config, "threads": args.threads}
    times = []

    if args.decode:
        # The same work as qkv-bench --decode: decode_length steps, no stop at <eos>; beam K keeps
        # the K best of the K·V extensions of each sentence's hypotheses. The transformer decodes
        # the way nn.Transformer users do, re-running the decoder over the whole prefix each step
        # (nn.TransformerDecoder has no KV cache); the Bahdanau model carries its GRU state.
        model.eval()
        K, V, L = args.beam, c["vocab"], args.decode_length
        with torch.no_grad():
            for i in range(args.warmup + args.steps):
                start = time.perf_counter()
                scores = torch.full((B, K), float("-inf"))
                scores[:, 0] = 0  # one live hypothesis per sentence at the start
                scores = scores.reshape(-1)  # [B·K]
                previous = torch.ones(B * K, dtype=torch.long)  # <bos>
                padding = source_padding.repeat_interleave(K, dim=0)
                if c["kind"] == "transformer":
                    memory = model.encode(source, source_padding).repeat_interleave(K, dim=0)
                    tokens = previous[:, None]  # [B·K, 1]
                else:
                    keys, projected_keys, h = (x.repeat_interleave(K, dim=0) for x in model.encode(source))
                for _ in range(L):
                    if c["kind"] == "transformer":
                        logits = model.decode(memory, padding, tokens)[:, -1]  # [B·K, V]
                    else:
                        h, logits = model.step(keys, projected_keys, padding, h, previous)
                    if K == 1:
                        previous = logits.argmax(-1)
                        rows = None
                    else:
                        candidates = (scores[:, None] + torch.log_softmax(logits, dim=-1)).reshape(B, K * V)
                        scores, chosen = candidates.topk(K, dim=1)  # [B, K]
                        rows = (torch.arange(B)[:, None] * K + chosen // V).reshape(-1)
                        previous = (chosen % V).reshape(-1)
                        scores = scores.reshape(-1)
                    if c["kind"] == "transformer":
                        tokens = torch.cat([tokens if rows is None else tokens[rows], previous[:, None]], dim=1)
                    elif rows is not None:
                        h = h[rows]
                if i >= args.warmup:
                    times.append((time.perf_counter() - start) * 1000)
        batch_ms = median(times)
        result.update(mode="decode", beam=K, batch=B, decode_length=L, batch_ms_median=batch_ms,
                      sentences_per_s=B / (batch_ms / 1000), ms_per_token=batch_ms / L)
    else:
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
        T = c["target_length"]
        for i in range(args.warmup + args.steps):
            target_output = random_tokens(generator, B, T, c["vocab"])
            target_input = torch.cat([torch.ones(B, 1, dtype=torch.long), target_output[:, :-1]], dim=1)
            start = time.perf_counter()
            logits = model(source, source_padding, target_input)
            loss = F.cross_entropy(logits.reshape(-1, c["vocab"]), target_output.reshape(-1), ignore_index=0)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if i >= args.warmup:
                times.append((time.perf_counter() - start) * 1000)
        step_ms = median(times)
        flops = 3 * forward_flops(c)
        result.update(step_ms_median=step_ms, tgt_tokens_per_s=B * T / (step_ms / 1000), flops_per_step=flops,
                      gflops_per_s=flops / (step_ms / 1000) / 1e9)
    result.update(peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, params=params)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
