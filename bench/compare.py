#!/usr/bin/python3
"""qkv against PyTorch, side by side: runs qkv-bench and bench/torch_ref.py alternately
(A B A B ...) for every configuration at 1 and 2 threads, then prints a table of medians.

    /usr/bin/python3 bench/compare.py --qkv-bench build/bench/qkv-bench [--rounds 3] [--steps 10]

Alternating in one run means both sides see the same machine load; each cell is the median
over rounds of each run's median step. PyTorch at 2 threads runs with OMP_WAIT_POLICY=PASSIVE
(its OpenMP threads otherwise spin against OpenBLAS's own and run ~2.5x slower on 2 cores).
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are left as the environment has them, for both sides.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = ["transformer-tiny", "transformer-small", "bahdanau"]
DECODE_CONFIGS = ["transformer-tiny", "transformer-small", "bahdanau"]
# (label, extra arguments): batch-64 throughput greedy and with beam 4, and batch-1 latency.
DECODE_MODES = [("greedy, batch 64", []), ("beam 4, batch 64", ["--beam", "4"]), ("greedy, batch 1", ["--batch", "1"]),
                ("beam 4, batch 1", ["--beam", "4", "--batch", "1"])]


def run_json(command, env):
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"compare: {' '.join(command)} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def environment(side, threads):
    env = dict(os.environ)
    if side == "torch" and threads > 1:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def command(side, args, config, threads, extra):
    base = [args.qkv_bench] if side == "qkv" else [sys.executable, str(HERE / "torch_ref.py")]
    return base + ["--config", config, "--threads", str(threads)] + extra


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qkv-bench", default=str(HERE.parent / "build" / "bench" / "qkv-bench"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--no-decode", action="store_true")
    parser.add_argument("--no-train", action="store_true", help="only the sgemm peak and the decoding table")
    parser.add_argument("--decode-configs", default=",".join(DECODE_CONFIGS))
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    configs = [] if args.no_train else args.configs.split(",")
    decode_configs = args.decode_configs.split(",")

    runs = {}  # (side, kind, config, threads) -> [json]
    steps = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    for round_index in range(args.rounds):
        for threads in thread_counts:
            for side in ("qkv", "torch"):
                base = [args.qkv_bench] if side == "qkv" else [sys.executable, str(HERE / "torch_ref.py")]
                runs.setdefault((side, "sgemm", "sgemm", threads), []).append(
                    run_json(base + ["--sgemm", "--threads", str(threads)], environment(side, threads)))
            for config in configs:
                for side in ("qkv", "torch"):
                    result = run_json(command(side, args, config, threads, steps), environment(side, threads))
                    runs.setdefault((side, "train", config, threads), []).append(result)
                    print(f"round {round_index + 1} {side:5} {config:17} threads={threads} "
                          f"{result['tgt_tokens_per_s']:9.0f} tok/s  {result['peak_rss_mb']:6.0f} MB", file=sys.stderr)
            if not args.no_decode:
                for config in decode_configs:
                    for label, extra in DECODE_MODES:
                        # batch 1 runs are short: more of them for a steadier median
                        repeats = ["--steps", "10", "--warmup", "2"] if "--batch" in extra else ["--steps", "3", "--warmup", "1"]
                        for side in ("qkv", "torch"):
                            result = run_json(command(side, args, config, threads, ["--decode"] + extra + repeats),
                                              environment(side, threads))
                            runs.setdefault((side, label, config, threads), []).append(result)

    def med(side, kind, config, threads, field):
        return statistics.median(r[field] for r in runs[(side, kind, config, threads)])

    if configs:
        print("Training, target tokens/s (median over rounds); sgemm = OpenBLAS sgemm 1024^3 at the same threads")
        header = (f"| {'config':17} | thr | {'qkv tok/s':>9} | {'torch tok/s':>11} | {'qkv/torch':>9} | {'qkv MB':>6} | "
                  f"{'torch MB':>8} | {'qkv %sgemm':>10} | {'torch %sgemm':>12} |")
        print(header)
        print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for config in configs:
        for threads in thread_counts:
            qkv = med("qkv", "train", config, threads, "tgt_tokens_per_s")
            torch = med("torch", "train", config, threads, "tgt_tokens_per_s")
            sgemm = med("qkv", "sgemm", "sgemm", threads, "gflops_per_s")
            qkv_gflops = med("qkv", "train", config, threads, "gflops_per_s")
            torch_gflops = med("torch", "train", config, threads, "gflops_per_s")
            print(f"| {config:17} | {threads:3} | {qkv:9.0f} | {torch:11.0f} | {qkv / torch:8.2f}x | "
                  f"{med('qkv', 'train', config, threads, 'peak_rss_mb'):6.0f} | "
                  f"{med('torch', 'train', config, threads, 'peak_rss_mb'):8.0f} | "
                  f"{100 * qkv_gflops / sgemm:9.0f}% | {100 * torch_gflops / sgemm:11.0f}% |")
    for threads in thread_counts:
        kernel = {side: runs[(side, "sgemm", "sgemm", threads)][0].get("kernel", "?") for side in ("qkv", "torch")}
        print(f"sgemm 1024^3 at {threads} thread(s): qkv's OpenBLAS {med('qkv', 'sgemm', 'sgemm', threads, 'gflops_per_s'):.1f} "
              f"GFLOP/s ({kernel['qkv']} kernel), via torch.mm {med('torch', 'sgemm', 'sgemm', threads, 'gflops_per_s'):.1f} "
              f"GFLOP/s ({kernel['torch']} kernel)")
    if len(thread_counts) > 1 and "transformer-small" in configs:
        one, two = thread_counts[0], thread_counts[1]
        ratio = med("qkv", "train", "transformer-small", two, "tgt_tokens_per_s") / med(
            "qkv", "train", "transformer-small", one, "tgt_tokens_per_s")
        print(f"qkv transformer-small, {two} threads vs {one}: {ratio:.2f}x")
    if not args.no_decode:
        print("\nDecoding 24 tokens per sentence, no stop at <eos> (qkv: KV cache; torch: nn.Transformer re-run over "
              "the prefix, the Bahdanau GRU state carried); sentences/s, and ms per decoding step")
        header = (f"| {'config':17} | {'mode':16} | thr | {'qkv sent/s':>10} | {'torch sent/s':>12} | {'qkv/torch':>9} | "
                  f"{'qkv ms/step':>11} | {'torch ms/step':>13} |")
        print(header)
        print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
        for config in decode_configs:
            for label, _ in DECODE_MODES:
                for threads in thread_counts:
                    qkv = med("qkv", label, config, threads, "sentences_per_s")
                    torch = med("torch", label, config, threads, "sentences_per_s")
                    print(f"| {config:17} | {label:16} | {threads:3} | {qkv:10.1f} | {torch:12.1f} | {qkv / torch:8.2f}x | "
                          f"{med('qkv', label, config, threads, 'ms_per_token'):11.2f} | "
                          f"{med('torch', label, config, threads, 'ms_per_token'):13.2f} |")

if __name__ == "__main__":
    main()
