"""Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k) for n samples with c correct."""
from __future__ import annotations

import math


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n is correct.

    Uses the product form prod_{i=n-c+1}^{n} (1 - k/i), which stays exact in floating point
    where the binomials would overflow.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(correct_counts: list[int], n: int) -> dict[int, float]:
    """{k: mean pass@k over problems} for k = 1, 2, 4, ... up to n (and n itself)."""
    ks = sorted({2**j for j in range(n.bit_length()) if 2**j <= n} | {n})
    return {k: sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts) for k in ks}
