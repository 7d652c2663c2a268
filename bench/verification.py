"""Case 3: `verify()` of a ticket beside the raw Ed25519 check it rests on."""

from __future__ import annotations

import base64
import time

from app.tickets.keys import KeySet, SigningKey
from app.tickets.sealkeys import SEAL_FILE, SealKeySet
from app.tickets.ticket import issue, verify
from bench.common import (
    AUDIENCE,
    BOUND_CONFIG,
    ISSUER,
    PROJECT,
    TICKET_MAX_BYTES,
    CaseResult,
    Plan,
    Row,
    new_keys,
    per_call,
    signer_of,
    us,
)


def case_verify(plan: Plan) -> CaseResult:
    keys_dir, _ = new_keys(plan.workdir, "verify")
    keys = KeySet.load(keys_dir)
    signer = signer_of(keys_dir)
    token = issue(
        signer,
        project=PROJECT,
        config=BOUND_CONFIG,
        locked=("instructions", "tools"),
        ttl=300,
        now=time.time(),
        issuer=ISSUER,
        audience=AUDIENCE,
        max_bytes=TICKET_MAX_BYTES,
    ).token
    # The same ticket sealed (the minter's default): decrypt, then the same verification.
    seal_keys = SealKeySet.load(keys_dir / SEAL_FILE)
    sealed = issue(
        signer,
        project=PROJECT,
        config=BOUND_CONFIG,
        locked=("instructions", "tools"),
        ttl=300,
        now=time.time(),
        issuer=ISSUER,
        audience=AUDIENCE,
        max_bytes=TICKET_MAX_BYTES,
        seal=seal_keys.sealer,
    ).token
    now = time.time()

    def full() -> object:
        return verify(
            token, keys, issuer=ISSUER, audience=AUDIENCE, leeway=5, max_bytes=TICKET_MAX_BYTES, now=now
        )

    def opened() -> object:
        return verify(
            sealed,
            keys,
            seal_keys=seal_keys,
            issuer=ISSUER,
            audience=AUDIENCE,
            leeway=5,
            max_bytes=TICKET_MAX_BYTES,
            now=now,
        )

    head, _, signature = token.rpartition(".")
    number = 500 if plan.quick else 2000
    raw = raw_verify(signer, head, signature, plan)
    checked = per_call(full, number=number, repeat=5)
    checked_sealed = per_call(opened, number=number, repeat=5)
    ratio, ratio_sealed = checked / raw, checked_sealed / raw
    result = CaseResult("verify")
    result.data = {
        "verify_us": us(checked),
        "verify_sealed_us": us(checked_sealed),
        "raw_verify_us": us(raw),
        "ticket_bytes": len(token),
        "sealed_ticket_bytes": len(sealed),
    }
    result.rows = [
        Row(
            "3. Verification",
            "verify() per ticket",
            us(checked),
            "µs",
            "",
            None,
            f"{len(token)}-byte ticket; raw verify {us(raw):.1f} µs",
        ),
        Row("3. Verification", "verify() / raw verify", ratio, "×", "≤ 2.5", ratio <= 2.5),
        Row(
            "3. Verification",
            "verify() of a sealed ticket",
            us(checked_sealed),
            "µs",
            "",
            None,
            f"{len(sealed)}-byte sealed ticket (no `cfz`): decrypt, then the same checks",
        ),
        Row("3. Verification", "verify() sealed / raw verify", ratio_sealed, "×", "", None),
    ]
    return result


def raw_verify(signer: SigningKey, head: str, signature: str, plan: Plan) -> float:
    raw_signature = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    signed = head.encode()
    public = signer.public_key
    number = 500 if plan.quick else 2000
    return per_call(lambda: public.verify(raw_signature, signed), number=number, repeat=5)
