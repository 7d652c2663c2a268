"""The session protocol (docs/protocol.md) as a sans-I/O core: fed frames, upstream events and the time.

    core = SessionCore(session_id, project=..., binding=..., settings=..., registry=..., now=t)
    core.receive_client(frame, now)    a client frame             -> actions
    core.receive_upstream(event, now)  an upstream event          -> actions
    core.connected(now) / core.upstream_failed(message)           -> actions
    core.holding(where, size)          bytes held somewhere       -> actions
    core.fits(where, size)             would that be within the budget (asks only)
    core.tick(now)                     time passed (or shutdown)  -> actions
    core.next_deadline(), core.read_after()

Actions: `SendClient`, `SendUpstream`, `Connect` (open the upstream with this effective config),
`Close` (no word) and `Terminate` (`session.terminating`, then close). After a `Close` or
`Terminate` the core is over: `ending` holds it and every call returns nothing. No awaits, no
tasks, no sockets: `app.session.driver` runs the core over a WebSocket and an upstream.
"""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.exceptions import RealtimeError
from app.session.actions import (
    CLOSE_CODES,
    NORMAL,
    POLICY,
    TOO_BIG,
    Action,
    Close,
    Connect,
    Ending,
    Event,
    SendClient,
    SendUpstream,
    Terminate,
)
from app.session.binding import Binding, describe, start_config, update_config
from app.session.events import (
    SessionStart,
    SessionUpdate,
    ToolResult,
    decode_relayed,
    error_event,
    forwarded,
    parse_event,
)
from app.session.limits import MAX_VALUES, Budget, Limits, Rate, check_config_values, frame_size, values
from app.session.models import ModelInfo, ModelRegistry
from app.session.toolcalls import ToolCalls
from app.session.upstream import SessionInfo
from app.session.usage import Usage, base64_bytes
from app.sessionerrors import (
    AlreadyStartedError,
    ConfigError,
    InvalidEventError,
    SessionNotStartedError,
    SessionUpdateUnsupportedError,
)

#: Bound fields whose content stays out of what the session shows its client: a sealed ticket hides
#: them from the browser, so a diagnostic must not hand them back (docs/security.md).
HIDDEN_WHEN_BOUND = frozenset({"instructions", "tools"})


class SessionCore:
    """One session from the first frame to the end, as state and rules only."""

    def __init__(
        self,
        session_id: str,
        *,
        project: str,
        binding: Binding | None,
        settings: Settings,
        registry: ModelRegistry,
        now: float,
    ) -> None:
        self.id = session_id
        self.project = project
        self._binding = binding
        self._registry = registry
        self._max_frame = settings.max_frame_bytes
        self._limits = Limits(settings, opened_at=now)
        self._rate = Rate(settings, now=now)
        self._budget = Budget(settings.session_memory_bytes)
        self._connecting = False
        self._shutdown = False
        self._revoked: str | None = None
        self._upstream_ending: str | None = None
        self._upstream_kind = settings.upstream
        #: What the session relayed and the provider reported (docs/operations.md, "Usage").
        self.usage = Usage(provider=settings.upstream)
        self._tool_calls = ToolCalls()
        self.config: Event = {}
        self.model: ModelInfo | None = None
        self.ending: Ending | None = None
        self.over = False  # ended, or the client went

    @property
    def started(self) -> bool:
        return self._limits.started

    # Time ------------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When `tick` next has something to check (start deadline, idle timeout, maximum length)."""
        return self._limits.deadline()

    def read_after(self) -> float:
        """The earliest moment the next client frame may be read (the rate limit's back-pressure)."""
        return self._rate.read_after()

    def tick(self, now: float) -> list[Action]:
        """Time has passed, or a shutdown was asked for: end the session if a limit says so."""
        if self.over:
            return []
        if self._revoked is not None:
            return self._end(Terminate("revoked", self._revoked))
        if self._shutdown:
            return self._end(
                Terminate("server_shutdown", "the server is shutting down; reconnect with a new ticket")
            )
        passed = self._limits.passed(now)
        return [] if passed is None else self._end(Terminate(*passed))

    def shutdown(self) -> None:
        """Ask for the end; the next `tick` ends the session with `server_shutdown`."""
        self._shutdown = True

    def revoke(self, message: str) -> None:
        """Ask for the end; the next `tick` ends the session with `revoked` (close 1008)."""
        self._revoked = message

    # The client ------------------------------------------------------------------------------

    def client_gone(self) -> None:
        self.over = True

    def receive_client(self, frame: str | bytes, now: float) -> list[Action]:
        """One client frame: size and rate first, then the protocol."""
        if self.over:
            return []
        self._limits.last_frame = now
        size = frame_size(frame)
        if size > self._max_frame:
            return self._end(Close(TOO_BIG, "frame too large"))
        if not self._rate.admit(size, now):
            return self._end(
                Terminate("rate_limited", "the client sent faster than its rate limit for too long")
            )
        if not self.started:
            return self._before_start(frame)
        ready = forwarded(frame)  # audio and turn control: checked without the models
        if ready is not None:
            if len(ready) == 2:  # `audio.append`, the bulk of a session: its bytes are counted
                audio = ready["audio"]  # `base64_bytes`, inline: this runs for every frame
                self.usage.input_audio_bytes += (
                    len(audio) * 3 // 4 - audio.endswith("=") - audio.endswith("==")
                )
            return [SendUpstream(ready)]
        counted = values(frame)
        if counted > MAX_VALUES:  # refused unread: reading it would hold the loop
            return [SendClient(error_event(InvalidEventError(f"a frame holds at most {MAX_VALUES} values")))]
        try:
            event = parse_event(frame)
            if isinstance(event, SessionStart):
                raise AlreadyStartedError("the session has already started; use session.update")
            if isinstance(event, SessionUpdate):
                check_config_values(counted)
                return self._update(event.config)
            if isinstance(event, ToolResult):
                self._tool_calls.answer(event.tool_call_id, tools=bool(self.config.get("tools")))
        except RealtimeError as exc:
            return [SendClient(error_event(exc))]
        dumped = event.model_dump(exclude_none=True)
        if dumped["type"] == "audio.append":
            self.usage.input_audio_bytes += base64_bytes(dumped["audio"])
        return [SendUpstream(dumped)]

    def _before_start(self, frame: str | bytes) -> list[Action]:
        if self._connecting:
            return []  # the driver reads no frame while it connects; nothing to do with one
        try:  # a frame of too many values is not a session.start this edge reads
            event = parse_event(frame) if values(frame) <= MAX_VALUES else None
        except InvalidEventError:
            event = None
        if not isinstance(event, SessionStart):
            error = SessionNotStartedError("the first event must be session.start")
            return [SendClient(error_event(error)), *self._end(Close(POLICY, "session not started"))]
        try:
            check_config_values(values(frame))
            config, model = start_config(
                {} if event.config is None else event.config, self._binding, self._registry
            )
        except ConfigError as exc:
            return [SendClient(error_event(exc))]  # the client may try again until the deadline
        self.config, self.model, self._connecting = config, model, True
        bound = self._binding.config if self._binding is not None else {}
        hidden = HIDDEN_WHEN_BOUND.intersection(bound)
        self.usage = Usage(
            provider=model.provider if self._upstream_kind == "providers" else self._upstream_kind,
            input_rate=model.input_sample_rate,
            output_rate=model.output_sample_rate,
        )
        return [Connect(SessionInfo(self.id, self.project, config, model, hidden, self.usage))]

    def _update(self, changes: Any) -> list[Action]:
        assert self.model is not None  # noqa: S101 - updates come after the start
        if not self.model.session_update:
            raise SessionUpdateUnsupportedError(
                f"{self.model.id} ignores session.update: set the config in session.start"
            )
        before = self.config
        self.config, self.model = update_config(before, self.model, changes, self._binding, self._registry)
        delta: Event = {name: None for name in before if name not in self.config}
        delta.update(self.config)
        return [
            SendUpstream({"type": "session.update", "config": delta}),
            SendClient({"type": "session.updated"}),
        ]

    # The upstream ----------------------------------------------------------------------------

    def connected(self, now: float) -> list[Action]:
        """The upstream took the session: tell the client `session.started`."""
        if self.over:
            return []
        assert self.model is not None  # noqa: S101 - connected follows Connect
        self._limits.started = True
        self._connecting = False
        return [SendClient(describe(self.id, self.config, self.model, self._binding))]

    def upstream_failed(self, message: str) -> list[Action]:
        """The upstream could not be reached, refused, or went: close as it announced, else a failure.

        An upstream that sent its own `session.terminating` (already passed on) is closed with the
        close code of that announcement, whatever its socket did next.
        """
        if self.over:
            return []
        if self._upstream_ending is not None:
            code = self._upstream_ending
            return self._end(Close(CLOSE_CODES.get(code, NORMAL), code))
        return self._end(Terminate("upstream_error", message))

    def upstream_ended(self) -> list[Action]:
        """The upstream closed the session cleanly."""
        return self.upstream_failed("the upstream ended the session without a reason")

    def receive_upstream(self, event: Event | str) -> list[Action]:
        """One upstream event, to the client as it is; a relayed frame must be a JSON object with a type."""
        if self.over:
            return []
        decoded: Any = decode_relayed(event) if isinstance(event, str) else event
        if not isinstance(decoded, dict) or not isinstance(decoded.get("type"), str):
            return self.upstream_failed("the upstream sent a frame that is not an event")
        if decoded["type"] == "tool.call":
            call_id = decoded.get("tool_call_id")
            if isinstance(call_id, str) and self.config.get("tools"):
                self._tool_calls.sent(call_id)
        elif decoded["type"] == "session.terminating":
            error = decoded.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            self._upstream_ending = code if isinstance(code, str) and code else "upstream_error"
        elif decoded["type"] == "audio.delta":
            audio = decoded.get("audio")
            if type(audio) is str:
                # `base64_bytes`, inline: this runs for every frame
                self.usage.output_audio_bytes += (
                    len(audio) * 3 // 4 - audio.endswith("=") - audio.endswith("==")
                )
        return [SendClient(event)]

    # Memory ----------------------------------------------------------------------------------

    def fits(self, where: str, size: int) -> bool:
        """Whether `holding(where, size)` would leave the session within its budget (asks only)."""
        return self._budget.fits(where, size)

    def holding(self, where: str, size: int) -> list[Action]:
        """`where` (the upstream's queues, an outbox) now holds `size` bytes of this session."""
        if self.over or self._budget.hold(where, size):
            return []
        return self._end(
            Terminate(
                "session_overloaded",
                f"the session holds more than its {self._budget.limit} bytes: read the events sent to you",
            )
        )

    # The end ---------------------------------------------------------------------------------

    def _end(self, ending: Ending) -> list[Action]:
        self.ending = ending
        self.over = True
        return [ending]
