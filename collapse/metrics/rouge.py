"""ROUGE-1/2/L/Lsum F1 with rouge-score (Porter stemming on), bootstrap intervals, scoring over processes.

rouge-score's ROUGE-Lsum splits a summary into sentences at newlines (its nltk splitter needs
punkt data these machines lack), so `sentences` puts one sentence a line first. Its stemmer is
half the scoring time; `CachedStemmer` remembers each word's stem (the same stems, ~2x faster).
"""
import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from rouge_score import rouge_scorer, tokenize
from rouge_score.tokenizers import Tokenizer
from nltk.stem import porter

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
WORKER_START_S = 1.0   # a scoring process's start and imports (rouge-score, nltk), measured
# a sentence ends at . ! or ? (and any closing quote or bracket) followed by space and a capital, digit or quote
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def sentences(text: str) -> str:
    """`text` with one sentence a line (existing line breaks kept), as ROUGE-Lsum reads it."""
    lines = []
    for line in text.splitlines():
        lines.extend(s.strip() for s in _SENTENCE_END.split(line) if s.strip())
    return "\n".join(lines)


class CachedStemmer:
    """nltk's Porter stemmer as rouge-score builds it, with every word's stem remembered."""

    def __init__(self):
        self._stem = functools.lru_cache(maxsize=2 ** 20)(porter.PorterStemmer().stem)

    def stem(self, word: str) -> str:
        return self._stem(word)


class StemmingTokenizer(Tokenizer):
    """rouge-score's default tokenizer with use_stemmer=True, cached."""

    def __init__(self):
        self._stemmer = CachedStemmer()

    def tokenize(self, text):
        return tokenize.tokenize(text, self._stemmer)


_scorer = None


def _init_worker():
    global _scorer
    _scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=StemmingTokenizer())


def _score_chunk(pairs: list[tuple[str, str]]) -> list[list[float]]:
    if _scorer is None:
        _init_worker()
    out = []
    for reference, prediction in pairs:
        s = _scorer.score(sentences(reference), sentences(prediction))
        out.append([s[t].fmeasure for t in ROUGE_TYPES])
    return out


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def scoring_processes(pairs: int, processes: int = 0) -> int:
    """How many processes score `pairs` pairs. `processes` 0: one per available core, but at least ~2,000
    pairs each (a scoring process takes ~1 s to start: its imports); 1: in this process only."""
    if processes == 0:
        processes = min(available_cores(), max(1, pairs // 2000))
    return max(1, min(processes, pairs))


class Workers:
    """Scoring subprocesses, started ahead of the scoring so that their imports (~1 s: WORKER_START_S) overlap
    the caller's own work, e.g. generating the summaries they will score. Plain subprocesses that import only
    this module: a fork of the caller (torch's threads, maybe a gloo group) is not safe, and multiprocessing's
    spawn and forkserver workers re-import the caller's __main__ (a stage runner: torch, transformers, seconds
    per worker). Each takes one batch of pairs; close() ends any that got none."""

    def __init__(self, count: int):
        self.launched = time.perf_counter()
        self.ready = False   # every process has said so (wait_ready)
        self.procs = [subprocess.Popen([sys.executable, "-c", SERVE], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, env=_worker_env()) for _ in range(count)]

    def wait_ready(self) -> None:
        """Block until every process has finished its imports."""
        if not self.ready:
            for proc in self.procs:
                _expect_ready(proc)
        self.ready = True

    def send(self, chunks: list[list]) -> None:
        """One chunk of pairs to each process, written from threads: a process reads its pairs only once
        its imports are done, and the caller meanwhile scores its own share."""
        self.feeders = [threading.Thread(target=_feed, args=(proc, chunk)) for proc, chunk in zip(self.procs, chunks)]
        for feeder in self.feeders:
            feeder.start()

    def receive(self) -> list[list[list[float]]]:
        """Each process's rows, in the order of the chunks sent."""
        out = []
        for proc, feeder in zip(self.procs, self.feeders):
            if not self.ready:
                _expect_ready(proc)
            rows = proc.stdout.read()
            feeder.join()
            if proc.wait() != 0:
                raise RuntimeError(f"a ROUGE scoring process exited with code {proc.returncode}")
            out.append(json.loads(rows))
        self.procs = []
        return out

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.procs = []


def _expect_ready(proc: subprocess.Popen) -> None:
    if proc.stdout.readline() != b"ready\n":
        raise RuntimeError(f"a ROUGE scoring process failed to start (exit code {proc.wait()})")


def score_pairs(references: list[str], predictions: list[str], processes: int = 0,
                workers: Workers | None = None) -> np.ndarray:
    """F1 per pair and ROUGE type: float [n, 4] in ROUGE_TYPES order, on the 0-1 scale.
    `processes`: see scoring_processes. `workers`: already started (then `processes` is not used)."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    pairs = list(zip(references, predictions))
    if workers is None:
        count = scoring_processes(len(pairs), processes)
        if count <= 1:
            return np.array(_score_chunk(pairs), dtype=np.float64).reshape(len(pairs), len(ROUGE_TYPES))
        workers = Workers(count - 1)
    try:
        parts = _score_with(pairs, workers)
    finally:
        workers.close()
    return np.array([row for part in parts for row in part], dtype=np.float64).reshape(len(pairs), len(ROUGE_TYPES))


def _score_with(pairs: list, workers: Workers) -> list:
    """This process scores a probe to learn its rate while the workers import, then the rest is split so
    that all finish together: this process also takes the pairs it can score before the workers are ready."""
    processes = len(workers.procs) + 1
    probe = min(500, len(pairs) // 10)
    probe_started = time.perf_counter()
    parts = [_score_chunk(pairs[:probe])]
    now = time.perf_counter()
    rate = probe / max(now - probe_started, 1e-9)   # pairs a second
    rest = len(pairs) - probe
    head_start = 0.0 if workers.ready else rate * max(0.0, WORKER_START_S - (now - workers.launched))
    per_worker = max(0, int((rest - head_start) / processes))
    ours = rest - per_worker * (processes - 1)
    bounds = [probe + ours + i * per_worker for i in range(processes)]
    workers.send([pairs[a:b] for a, b in zip(bounds, bounds[1:])])
    parts.append(_score_chunk(pairs[probe:probe + ours]))
    return parts + workers.receive()


def _feed(worker: subprocess.Popen, pairs: list) -> None:
    worker.stdin.write(json.dumps(pairs).encode())
    worker.stdin.close()


def _worker_env() -> dict:
    package_root = str(Path(__file__).resolve().parents[2])   # this checkout, wherever the caller runs from
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}


# a scoring process: imports (~1 s: WORKER_START_S), says "ready", then reads its pairs
SERVE = "import sys; from collapse.metrics.rouge import serve; serve()"


def serve() -> None:
    """Says "ready" once imported; then (reference, prediction) pairs as JSON in, their F1 rows as JSON out."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdout.write(json.dumps(_score_chunk(json.loads(sys.stdin.buffer.read()))))


def bootstrap_ci(per_item: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> np.ndarray:
    """Percentile bootstrap interval of the mean of each column: float [2, columns] (low, high)."""
    rng = np.random.default_rng(seed)
    n = len(per_item)
    means = np.stack([per_item[rng.integers(0, n, n)].mean(axis=0) for _ in range(resamples)])
    tail = (1 - level) / 2
    return np.quantile(means, [tail, 1 - tail], axis=0)


def rouge(references: list[str], predictions: list[str], bootstrap: int = 1000, processes: int = 0,
          seed: int = 0, workers: Workers | None = None) -> dict:
    """Mean F1 of each ROUGE type in percent, with its bootstrap 95% interval, and per-pair values.

    {"rouge1": 41.3, "rouge1_ci": [40.9, 41.7], ..., "per_pair": float [n, 4] (0-1)}
    """
    per_pair = score_pairs(references, predictions, processes, workers)
    out = {"per_pair": per_pair}
    means = per_pair.mean(axis=0) * 100
    ci = bootstrap_ci(per_pair, bootstrap, seed) * 100 if bootstrap and len(per_pair) > 1 else None
    for i, name in enumerate(ROUGE_TYPES):
        out[name] = float(means[i])
        out[f"{name}_ci"] = [float(ci[0, i]), float(ci[1, i])] if ci is not None else None
    return out
