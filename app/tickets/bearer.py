"""The runtime lookup: a request's Bearer API key checked in constant time against the key file."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from pathlib import Path

from app.exceptions import InvalidCredentialsError, MissingCredentialsError
from app.tickets.apikeys import MANAGEMENT_PREFIX, ApiKey, digest, read_keys
from app.tickets.keyfiles import Reloading

logger = logging.getLogger(__name__)


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).

    Raises:
        MissingCredentialsError: no header, another scheme, or an empty token.
    """
    if not authorization:
        raise MissingCredentialsError("send `Authorization: Bearer <runtime API key>`")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MissingCredentialsError("the Authorization header must use the Bearer scheme")
    token = token.strip()
    if not token:
        raise MissingCredentialsError("the Bearer token is empty")
    return token


class ApiKeyStore:
    """The hashed keys of one file, reloaded when the file changes (checked at most every 0.5 s).

    A broken file (by hand, or a tool gone wrong) never breaks a request: the last good set stays
    in use and one WARNING line says so (see `app.tickets.keyfiles.Reloading`).
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        check_interval: float = 0.5,
    ) -> None:
        self.path = path
        self._clock = clock
        self._file: Reloading[dict[str, ApiKey]] = Reloading(
            path,
            lambda: {key.digest: key for key in read_keys(path)},
            initial={},
            what="api keys",
            size=len,
            log=logger,
            clock=clock,
            interval=check_interval,
        )

    def load(self) -> ApiKeyStore:
        """Read the file now (start-up); a missing file means no keys yet, a broken one is logged."""
        self._file.check()
        return self

    def revoked(self) -> list[ApiKey]:
        """The revoked keys in the file now (reread when it changed), for revoking their tickets."""
        return [key for key in self._file.check().values() if key.revoked_at is not None]

    def by_id(self, key_id: str) -> ApiKey | None:
        """The stored key with this id, if any (the admin API checks whose it is)."""
        return next((key for key in self._file.check().values() if key.id == key_id), None)

    def check_management(self, token: str) -> ApiKey:
        """The management key for `token`; its project is one project id or `*` (every project).

        Raises:
            InvalidCredentialsError: unknown, revoked or expired key, a runtime key, or no project.
        """
        computed = digest(token)
        found = self._file.get().get(computed) or self._file.check().get(computed)
        if found is None or not hmac.compare_digest(found.digest, computed):
            raise InvalidCredentialsError("the API key is not valid")
        if found.kind != "management":
            raise InvalidCredentialsError(
                "runtime keys cannot use the admin API: use a management key (make api-key KIND=management)"
            )
        refusal = found.refusal(self._clock())
        if refusal is not None:
            raise InvalidCredentialsError(refusal)
        if not found.project:
            raise InvalidCredentialsError("the management key belongs to no project")
        return found

    def check(self, token: str) -> ApiKey:
        """The runtime key for `token`, with its project.

        Raises:
            InvalidCredentialsError: unknown, revoked or expired key, a management key, or a key with
                no project.
        """
        computed = digest(token)
        found = self._file.get().get(computed)
        if found is None:
            # A key made a moment ago works at once: one stat() on a miss, a reload only if it changed.
            found = self._file.check().get(computed)
        # The dict finds the candidate by digest; compare_digest makes the final match constant-time.
        if found is None or not hmac.compare_digest(found.digest, computed):
            if token.startswith(MANAGEMENT_PREFIX):
                raise InvalidCredentialsError(
                    "management keys (opmak-) cannot mint or open sessions: use a runtime key"
                )
            raise InvalidCredentialsError(
                "the API key is not valid: send a runtime key as `make api-key PROJECT=<id>` printed it"
            )
        if found.kind == "management" or token.startswith(MANAGEMENT_PREFIX):
            raise InvalidCredentialsError(
                "management keys (opmak-) cannot mint or open sessions: use a runtime key"
            )
        refusal = found.refusal(self._clock())
        if refusal is not None:
            raise InvalidCredentialsError(refusal)
        if not found.project:
            raise InvalidCredentialsError(
                "the API key belongs to no project: use a project-scoped runtime key"
            )
        return found
