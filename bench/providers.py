"""Case 6: audio frames through an edge in `providers` mode to a fake OpenAI, beside a pass-through floor.

The fake (tests/fake_providers.py, `--echo`) answers each audio chunk at once with an audio delta of
the same bytes, so a round trip is one 20 ms frame in and one out. The floor is a bare Starlette
WebSocket passing frames unchanged to the same fake (which then answers in this protocol): what a
relay costs with no checks and no translation. The translation cost is measured in-process, and so
is a Gemini resumption's gap: from the fake's `goAway` to the first message (`setupComplete`) on
the connection that resumes the session.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time
from typing import Any

from app.exceptions import UpstreamError
from app.session.events import encode_event
from app.session.models import ModelRegistry
from app.session.upstream import SessionInfo
from app.upstreams.providers.adapter import ProvidersUpstream
from app.upstreams.providers.link import Endpoint
from app.upstreams.providers.openai import OpenAITranslator
from bench.common import (
    CaseResult,
    Plan,
    Row,
    bare,
    interleaved,
    loadgen,
    median_of,
    new_keys,
    per_call,
    service,
    summary,
    us,
)
from bench.procs import Server
from bench.sessions import UNLIMITED

KEY = "sk-bench-provider-key"
MODEL = "openai/gpt-realtime-2"
FRAME = base64.b64encode(bytes(960)).decode()  # 20 ms of PCM16 at 24 kHz


def translation_seconds() -> float:
    """One 20 ms frame both ways: our event to the provider's frame, the provider's frame to ours."""
    translator = OpenAITranslator({"model": MODEL}, ModelRegistry.load().get(MODEL))
    event = {"type": "audio.append", "audio": FRAME}
    answer = json.dumps(
        {"type": "response.output_audio.delta", "event_id": "event_1", "response_id": "resp_1",
         "item_id": "item_1", "output_index": 0, "content_index": 0, "delta": FRAME}
    )  # fmt: skip

    def both_ways() -> object:
        for message in translator.to_provider(event):
            encode_event(message)
        return [encode_event(ours) for ours in translator.from_provider(json.loads(answer)) or ()]

    return per_call(both_ways, number=2000, repeat=5)


def resumption_gaps(rounds: int) -> list[float]:
    """Seconds from each `goAway` of a fake Gemini to the resumed connection's `setupComplete`."""
    from tests.fake_providers import FakeProvider

    model = ModelRegistry.load().get("gemini/gemini-3.1-flash-live-preview")
    info = SessionInfo("sess_bench", "bench", {"model": model.id, "modalities": ["text"]}, model)

    async def converse(fake: FakeProvider) -> None:
        endpoint = Endpoint("gemini", fake.url, KEY, model_in_query=False)
        upstream = ProvidersUpstream({"gemini": endpoint}, timeout=10, resumes=rounds)
        async with upstream.connect(info) as connection:
            events: asyncio.Queue[dict[str, Any] | UpstreamError | None] = asyncio.Queue()

            async def pump() -> None:
                # As the session's pump: always receiving, which is where the goAway is read and
                # the session resumed.
                try:
                    while True:
                        await events.put(await connection.receive())
                except UpstreamError as exc:
                    await events.put(exc)

            reading = asyncio.get_running_loop().create_task(pump())
            try:
                for turn in range(rounds):
                    await connection.send({"type": "text.input", "text": f"go away {turn}"})
                    while True:
                        event = await events.get()
                        if isinstance(event, UpstreamError):
                            raise event
                        if (event or {}).get("type") == "response.completed":
                            break
                    deadline = time.monotonic() + 10
                    while len(fake.resumed_at) <= turn:  # the fake answers from a thread of its own
                        if time.monotonic() > deadline:
                            raise TimeoutError("the session was not resumed within 10 s")
                        await asyncio.sleep(0.001)
            finally:
                reading.cancel()

    with FakeProvider("gemini", key=KEY) as fake:
        asyncio.run(asyncio.wait_for(converse(fake), 60 + 10 * rounds))
    return [resumed - away for away, resumed in zip(fake.go_away_at, fake.resumed_at, strict=True)]


def case_providers(plan: Plan) -> CaseResult:
    keys_dir, api_key = new_keys(plan.workdir, "providers")
    fake = Server(
        "tests.fake_providers",
        env={},
        log_path=plan.workdir / "fake-openai.log",
        args=("--kind", "openai", "--key", KEY, "--echo"),
    )
    with fake:
        url = f"ws://127.0.0.1:{fake.port}/v1/realtime"
        edge = service(
            plan,
            "providers-edge",
            keys_dir,
            REALTIME_UPSTREAM="providers",
            REALTIME_OPENAI_API_KEY=KEY,
            REALTIME_OPENAI_URL=url,
            **UNLIMITED,  # as in the relay case: the loop would otherwise meet the session's rate limit
        )
        floor = bare(plan, "floor-providers", "--relay-to", url, env={"BENCH_RELAY_KEY": KEY})
        with edge, floor:
            targets = {
                "floor": (floor, "", [floor.pid, fake.pid]),
                "providers": (edge, api_key, [edge.pid, fake.pid]),
            }

            def measure(name: str, target: tuple[Server, str, list[int]]) -> dict[str, Any]:
                server, key, pids = target
                return loadgen(
                    {
                        "mode": "pingpong",
                        "port": server.port,
                        "headers": {"Authorization": f"Bearer {key}"} if key else {},
                        "ping": {"type": "audio.append", "audio": FRAME},
                        "answer": "audio.delta",
                        "warmup": 200,
                        "rounds": 300 if plan.quick else 3000,
                        "sessions": plan.sessions,
                        "duration": plan.duration,
                        "server_pids": pids,
                    }
                )

            runs = interleaved(plan, targets, measure)
    floor_runs, providers = summary(runs["floor"]), summary(runs["providers"])
    for name, values in (("floor", floor_runs), ("providers", providers)):
        values["p50_ms"] = median_of(runs[name], "p50") * 1e3
        values["p99_ms"] = median_of(runs[name], "p99") * 1e3
    ratio = providers["rate"] / floor_runs["rate"]
    translation = us(translation_seconds())
    gaps = resumption_gaps(5 if plan.quick else 20)
    gap_ms = statistics.median(gaps) * 1e3
    result = CaseResult("providers")
    result.data = {
        "floor": floor_runs,
        "providers": providers,
        "ratio": ratio,
        "translation_us": translation,
        "resumption_gap_ms": gap_ms,
        "resumption_gaps_ms": [gap * 1e3 for gap in gaps],
    }
    result.rows = [
        Row(
            "6. Providers",
            "audio round trips through the edge to a fake OpenAI",
            providers["rate"],
            "/s",
            "",
            None,
            f"{plan.sessions} sessions, one 20 ms frame (24 kHz PCM16) each way; "
            f"p50 {providers['p50_ms']:.3f} ms, p99 {providers['p99_ms']:.3f} ms; "
            f"server CPU per round trip {providers['server_cpu_us']:.0f} µs (edge + fake)",
        ),
        Row(
            "6. Providers",
            "floor: pass-through relay to the same fake, round trips",
            floor_runs["rate"],
            "/s",
            "",
            None,
            f"p50 {floor_runs['p50_ms']:.3f} ms, p99 {floor_runs['p99_ms']:.3f} ms; "
            f"server CPU per round trip {floor_runs['server_cpu_us']:.0f} µs (floor + fake)",
        ),
        Row("6. Providers", "providers / pass-through floor throughput", ratio, "×", "≥ 0.7", ratio >= 0.7),
        Row(
            "6. Providers",
            "translation per 20 ms audio frame, both ways",
            translation,
            "µs",
            "",
            None,
            "ours → OpenAI frame and OpenAI frame → ours, JSON included, in-process",
        ),
        Row(
            "6. Providers",
            "Gemini resumption gap: goAway to the new connection's first message",
            gap_ms,
            "ms",
            "",
            None,
            f"median of {len(gaps)}, max {max(gaps) * 1e3:.1f} ms; against the fake Gemini, in-process "
            "(new WebSocket, setup with the handle, setupComplete)",
        ),
    ]
    return result
