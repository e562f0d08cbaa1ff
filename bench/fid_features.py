"""FID feature extraction throughput: the offline Inception (collapse/metrics/fid.py) on real MNIST.

Times, for N real MNIST test images [N, 1, 32, 32] uint8: loading the network, clean-fid's resize
to 299x299 alone, and the whole extraction (resize + Inception, fp32), in images/s.
Run: python bench/fid_features.py [--n 64 --threads 1 --batch-size 32 --device cpu]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collapse.data.mnist import load_mnist  # noqa: E402
from collapse.metrics.fid import InceptionFeatures  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = load_mnist("test")[:args.n].unsqueeze(1)

    t0 = time.perf_counter()
    extractor = InceptionFeatures(device=args.device, batch_size=args.batch_size)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    extractor.resized(images)
    resize_s = time.perf_counter() - t0
    extractor(images[:2])   # warm-up: first-call overheads are not throughput
    if extractor.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    feats = extractor(images)
    total_s = time.perf_counter() - t0
    assert feats.shape == (args.n, 2048)
    print(f"fid features: {args.n} images, {args.threads} thread(s), batch {args.batch_size}, {args.device}: "
          f"{args.n / total_s:.2f} img/s ({total_s:.1f} s); resize alone {args.n / resize_s:.0f} img/s; "
          f"network load {load_s:.1f} s")


if __name__ == "__main__":
    main()
