"""Search latency of the index backends at 10^4, 10^5 and 10^6 vectors: exact numpy vs FAISS.

    python benchmarks/search_latency.py                        # 1e4, 1e5, 1e6 vectors, 512-d
    python benchmarks/search_latency.py --sizes 10000 100000 --dim 512 --threads 2

The catalog is synthetic: unit vectors drawn around 2,000 random centres (music catalogs are
clustered, which is what an inverted-file index exploits; uniformly random vectors are the
worst case for it). Queries are catalog vectors plus noise of norm ~0.3 (cosine ~0.95 to
their source). For each size it prints the build time and the per-query latency (minimum,
median and 95th percentile over single queries, as ``musicembed search`` issues them) of

- numpy: the exact matrix-vector product + partial sort of ``musicembed.catalog.index.NumpyBackend``;
- faiss: ``musicembed.catalog.index.FaissBackend`` as ``--backend auto`` builds it (flat below 10,000
  vectors, IVF with sqrt(N) lists and ``--nprobe`` probes above), with its recall@10
  against the exact result.

On a busy machine the minimum is the figure least disturbed by other processes. Needs about
2 x N x D x 4 bytes of memory (4 GB at 10^6 x 512). Not run by the tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

if "--threads" in sys.argv:  # BLAS reads these when numpy is first imported
    _n = sys.argv[sys.argv.index("--threads") + 1]
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _n

import numpy as np  # noqa: E402


def catalog(n: int, dim: int, seed: int = 0, centres: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    x = np.empty((n, dim), np.float32)
    step = 100_000
    for a in range(0, n, step):  # in blocks: bounded temporary memory
        b = min(n, a + step)
        x[a:b] = c[rng.integers(0, centres, b - a)] + 0.6 * rng.standard_normal((b - a, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def latencies(backend, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    backend.search(queries[:1], k)  # warm-up
    times, ids = [], []
    for q in queries:
        t = time.perf_counter()
        _, i = backend.search(q[None], k)
        times.append(time.perf_counter() - t)
        ids.append(i[0])
    return np.array(times) * 1000, np.array(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=50, help="single queries timed per backend")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="BLAS/FAISS threads (default: as installed)")
    args = ap.parse_args()
    from musicembed.catalog.index import FaissBackend, NumpyBackend, faiss_available

    has_faiss = faiss_available()
    if has_faiss and args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"faiss {'yes' if has_faiss else 'not installed'}; dim {args.dim}, k {args.k}, "
          f"{args.queries} single queries, nprobe {args.nprobe}, threads {args.threads or 'default'}")
    print(f"{'vectors':>10} {'backend':>12} {'build s':>8} {'min ms':>8} {'median ms':>10} {'p95 ms':>8} "
          f"{'recall@10':>9}")
    for n in args.sizes:
        x = catalog(n, args.dim)
        rng = np.random.default_rng(1)
        noise = rng.standard_normal((args.queries, args.dim), dtype=np.float32) * np.float32(0.3 / np.sqrt(args.dim))
        q = x[rng.integers(0, n, args.queries)] + noise  # a perturbation of norm ~0.3
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        t = time.perf_counter()
        exact = NumpyBackend(x)
        build = time.perf_counter() - t
        ms, truth = latencies(exact, q, args.k)
        print(f"{n:>10,} {'numpy':>12} {build:8.2f} {ms.min():8.3f} {np.median(ms):10.3f} {np.percentile(ms, 95):8.3f} "
              f"{1.0:9.3f}",
              flush=True)
        if has_faiss:
            t = time.perf_counter()
            fb = FaissBackend(x, nprobe=args.nprobe)
            build = time.perf_counter() - t
            ms, got = latencies(fb, q, args.k)
            recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(got, truth)])
            print(f"{n:>10,} {'faiss-' + fb.kind:>12} {build:8.2f} {ms.min():8.3f} {np.median(ms):10.3f} "
                  f"{np.percentile(ms, 95):8.3f} {recall:9.3f}", flush=True)
            del fb
        del x, exact


if __name__ == "__main__":
    main()
