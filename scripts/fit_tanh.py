#!/usr/bin/python3
"""Coefficients of the float32 tanh in lib/numerics/vector_math.hpp.

tanh(x) ~ x P(x²) / Q(x²) on (0, 9], P and Q of degree 4 in x² with P(0) = Q(0) = 1 (so tanh(x) = x
near 0), fitted for the smallest largest *relative* error: Loeb's linearisation (x P - tanh Q,
weighted by 1 / (tanh Q) of the previous pass) with Lawson's reweighting for the minimax within each
pass. Fitted in u = (x/9)², then rescaled to powers of x², so the least-squares systems stay well
conditioned. Needs numpy (Debian: python3-numpy). Prints the largest relative error in exact
arithmetic (2.1e-8, a third of a float32 ulp) and the coefficients, highest power first as the
header's Horner steps use them; the float32 rounding of the evaluation brings the error to the
6.2 ulps that tests/f32/test_vector_math.cpp checks.
"""
import numpy as np

DEGREE_P, DEGREE_Q, LIMIT = 4, 4, 9.0


def fit(degree_p, degree_q, limit, passes=40, reweightings=300):
    x = np.sort(np.concatenate([np.linspace(1e-3, limit, 40000), np.geomspace(1e-7, 1e-3, 400)]))
    t = np.tanh(x)
    u = (x / limit) ** 2
    # x (1 + Σ p_k u^k) = t (1 + Σ q_k u^k)  <=>  Σ p_k x u^k - Σ q_k t u^k = t - x
    a = np.hstack([np.stack([x * u**k for k in range(1, degree_p + 1)], 1),
                   -np.stack([t * u**k for k in range(1, degree_q + 1)], 1)])
    b = t - x
    q_previous = np.ones_like(x)
    for _ in range(passes):
        scale = 1 / (t * q_previous)
        weights = np.full_like(x, 1 / len(x))
        for _ in range(reweightings):
            root = np.sqrt(weights) * scale
            solution, *_ = np.linalg.lstsq(a * root[:, None], b * root, rcond=None)
            error = np.abs((a @ solution - b) * scale)
            weights = weights * error
            weights /= weights.sum()
        q_previous = np.polyval(np.concatenate([[1.0], solution[degree_p:]])[::-1], u)
    powers = lambda n: limit ** (2 * np.arange(n + 1))
    p = np.concatenate([[1.0], solution[:degree_p]]) / powers(degree_p)
    q = np.concatenate([[1.0], solution[degree_p:]]) / powers(degree_q)
    return p, q


def main():
    p, q = fit(DEGREE_P, DEGREE_Q, LIMIT)
    x = np.linspace(1e-6, LIMIT, 400001)
    z = x * x
    relative = np.max(np.abs(x * np.polyval(p[::-1], z) / np.polyval(q[::-1], z) / np.tanh(x) - 1))
    print(f"largest relative error on (0, {LIMIT}]: {relative:.3g}")
    print("P, x^8 first:", ", ".join(f"{c:.9e}" for c in p[::-1]))
    print("Q, x^8 first:", ", ".join(f"{c:.9e}" for c in q[::-1]))


if __name__ == "__main__":
    main()
