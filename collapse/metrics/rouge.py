"""ROUGE-1/2/L/Lsum F1 with rouge-score (Porter stemming on), bootstrap intervals, scoring over processes.

rouge-score's ROUGE-Lsum splits a summary into sentences at newlines (its nltk splitter needs
punkt data these machines lack), so `sentences` puts one sentence a line first. Its stemmer is
half the scoring time; `CachedStemmer` remembers each word's stem (the same stems, ~2x faster).
"""
import collections
import functools
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from rouge_score import rouge_scorer, tokenize
from rouge_score.tokenizers import Tokenizer
from nltk.stem import porter

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
CHUNK = 200   # pairs a process takes at a time: ~70 ms of scoring, against ~1 ms to send and receive
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
    """Scoring subprocesses, which can start ahead of the scoring so that their imports (~1 s) overlap the
    caller's own work, e.g. generating the summaries they will score. Plain subprocesses that import only
    this module: a fork of the caller (torch's threads, maybe a gloo group) is not safe, and multiprocessing's
    spawn and forkserver workers re-import the caller's __main__ (a stage runner: torch, transformers, seconds
    per worker). They serve one score_pairs call; close() ends any that never served."""

    def __init__(self, count: int):
        self.procs = [subprocess.Popen([sys.executable, "-c", SERVE], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, env=_worker_env()) for _ in range(count)]
        self.ready = [False] * count   # each has said "ready": its imports are done

    def wait_ready(self) -> None:
        """Block until every process has finished its imports."""
        for i, proc in enumerate(self.procs):
            if not self.ready[i]:
                _expect_ready(proc)
                self.ready[i] = True

    def serve(self, i: int, take, rows: dict) -> None:
        """Process i scores chunks from `take` until none is left (run in a thread of the caller)."""
        proc = self.procs[i]
        if not self.ready[i]:
            _expect_ready(proc)
            self.ready[i] = True
        # two chunks in flight: the process starts the next while this thread waits for the GIL
        in_flight = collections.deque()
        while True:
            while len(in_flight) < 2 and (chunk := take()) is not None:
                proc.stdin.write(json.dumps(chunk[1]).encode() + b"\n")
                proc.stdin.flush()
                in_flight.append(chunk[0])
            if not in_flight:
                break
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"a ROUGE scoring process exited with code {proc.wait()} mid-scoring")
            rows[in_flight.popleft()] = json.loads(line)
        proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError(f"a ROUGE scoring process exited with code {proc.returncode}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
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
        rows = _score_with(pairs, workers)
    finally:
        workers.close()
    return np.array(rows, dtype=np.float64).reshape(len(pairs), len(ROUGE_TYPES))


def _score_with(pairs: list, workers: Workers) -> list:
    """This process and the workers take chunks of CHUNK pairs from one queue until it is empty, so all
    finish within a chunk of each other, however fast each is and whenever a worker's imports end."""
    starts = iter(range(0, len(pairs), CHUNK))
    lock = threading.Lock()

    def take():
        with lock:
            start = next(starts, None)
        return None if start is None else (start, pairs[start:start + CHUNK])

    rows, errors = {}, []

    def serve(i):
        try:
            workers.serve(i, take, rows)
        except Exception as e:   # noqa: BLE001 - re-raised below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(len(workers.procs))]
    for thread in threads:
        thread.start()
    while (chunk := take()) is not None:
        rows[chunk[0]] = _score_chunk(chunk[1])
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [row for start in sorted(rows) for row in rows[start]]


def _worker_env() -> dict:
    package_root = str(Path(__file__).resolve().parents[2])   # this checkout, wherever the caller runs from
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}


# a scoring process: imports (~1 s), says "ready", then scores the chunks it is sent, a JSON line each
SERVE = "from collapse.metrics.rouge import serve; serve()"


def serve() -> None:
    """Says "ready" once imported; then for each line of (reference, prediction) pairs in JSON on stdin,
    a line of their F1 rows in JSON on stdout, until stdin closes."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        sys.stdout.write(json.dumps(_score_chunk(json.loads(line))) + "\n")
        sys.stdout.flush()


def bootstrap_ci(per_item: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> np.ndarray:
    """Percentile bootstrap interval of the mean of each column: float [2, columns] (low, high)."""
    rng = np.random.default_rng(seed)
    n = len(per_item)
    means = np.stack([per_item[rng.integers(0, n, n)].mean(axis=0) for _ in range(resamples)])
    tail = (1 - level) / 2
    return np.quantile(means, [tail, 1 - tail], axis=0)


def rouge(references: list[str], predictions: list[str], bootstrap: int = 1000, processes: int = 0,
          seed: int = 0, workers: Workers | None = None, keep=None) -> dict:
    """Mean F1 of each ROUGE type in percent, with its bootstrap 95% interval, and per-pair values.
    `keep` (a collapse.partial.Keep): the per-pair values are kept once scored, and read back by a rerun.

    {"rouge1": 41.3, "rouge1_ci": [40.9, 41.7], ..., "per_pair": float [n, 4] (0-1)}
    """
    def scored():
        return score_pairs(references, predictions, processes, workers)
    per_pair = scored() if keep is None else _kept(keep, len(references), scored)
    out = {"per_pair": per_pair}
    means = per_pair.mean(axis=0) * 100
    ci = bootstrap_ci(per_pair, bootstrap, seed) * 100 if bootstrap and len(per_pair) > 1 else None
    for i, name in enumerate(ROUGE_TYPES):
        out[name] = float(means[i])
        out[f"{name}_ci"] = [float(ci[0, i]), float(ci[1, i])] if ci is not None else None
    return out


def _kept(keep, pairs: int, scored) -> np.ndarray:
    import torch   # torch-free for the scoring processes, which import this module and must not wait for torch
    from collapse import partial   # torch-free likewise: partial imports torch
    return partial.once(keep, "rouge", pairs, lambda: {"per_pair": torch.from_numpy(scored())})["per_pair"].numpy()
