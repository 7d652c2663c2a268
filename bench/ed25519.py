"""Case 10: Ed25519 sign and verify, libsodium (PyNaCl) beside OpenSSL (`cryptography`), in-process.

The same key, the same message (a bound ticket's signing input), the two libraries' calls taken in
turn, round after round, each round the best of a few runs of many calls: a drift of the shared
machine weighs on both alike. What the service calls is measured: PyNaCl's `sign` and `verify` (its
public API, which copies the message once) and `cryptography`'s.
"""

from __future__ import annotations

import statistics
import timeit
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import SigningKey as NaclSigningKey

from bench.common import BOUND_CONFIG, CaseResult, Plan, Row, at_least, mint_tickets, new_keys, signer_of


def _best(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=3)) / number


def case_ed25519(plan: Plan) -> CaseResult:
    keys_dir, _ = new_keys(plan.workdir, "ed25519")
    signer = signer_of(keys_dir)
    token = mint_tickets(signer, 1, BOUND_CONFIG)[0]
    message = token.rsplit(".", 1)[0].encode("ascii")
    openssl = Ed25519PrivateKey.generate()
    sodium = NaclSigningKey(openssl.private_bytes_raw())
    signature = openssl.sign(message)
    assert sodium.sign(message).signature == signature  # Ed25519 is deterministic: the same bytes
    public, verify_key = openssl.public_key(), sodium.verify_key
    calls: dict[str, Callable[[], object]] = {
        "openssl_sign": lambda: openssl.sign(message),
        "sodium_sign": lambda: sodium.sign(message),
        "openssl_verify": lambda: public.verify(signature, message),
        "sodium_verify": lambda: verify_key.verify(message, signature),
    }
    number = 300 if plan.quick else 2000
    rounds = 2 if plan.quick else 5
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(rounds):
        names = list(calls) if round_ % 2 == 0 else list(calls)[::-1]
        for name in names:
            times[name].append(_best(calls[name], number))
    us = {name: statistics.median(values) * 1e6 for name, values in times.items()}
    sign_gain = us["openssl_sign"] / us["sodium_sign"]
    verify_gain = us["openssl_verify"] / us["sodium_verify"]
    result = CaseResult("ed25519")
    result.data = {"us": us, "runs_seconds": times, "message_bytes": len(message)}
    detail = f"{len(message)}-byte signing input (a bound ticket's); median of {rounds} interleaved rounds"
    result.rows = [
        Row(
            "10. Ed25519",
            "verify: OpenSSL / libsodium time per call",
            verify_gain,
            "×",
            *at_least(verify_gain, 1.0),
            f"{us['openssl_verify']:.1f} against {us['sodium_verify']:.1f} µs; {detail}",
        ),
        Row(
            "10. Ed25519",
            "sign: OpenSSL / libsodium time per call",
            sign_gain,
            "×",
            *at_least(sign_gain, 1.0),
            f"{us['openssl_sign']:.1f} against {us['sodium_sign']:.1f} µs",
        ),
    ]
    return result
