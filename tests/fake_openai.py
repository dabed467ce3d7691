"""A fake OpenAI-compatible chat-completions and completions server on 127.0.0.1 for tests.

    def echo(messages, index):
        return f"echo[{index}]: {messages[-1]['content']}"

    with LoopbackServer(echo, latency_s=0.01, faults={"429": 0.1, "500": 0.05, "timeout": 0.02}) as srv:
        backend = OpenAIBackend([srv.url], "teacher")   # srv.url = "http://127.0.0.1:PORT/v1"

It speaks HTTP/1.1 with keep-alive on its own event-loop thread. Faults are drawn per request from a
seeded generator: "429", "500" and "503" answer with that status (429 and 503 with a `Retry-After:
<retry_after>` header when `retry_after` is set), "timeout" holds the request for `hang_s` before
answering, "malformed" answers 200 with a body that is not JSON, "length" answers 200 with every choice
cut to its first half and `finish_reason: "length"` (a reply that ran out of max_tokens). `script` lists
the faults of the first requests in order ("" = none) before the random draws begin. The reply text
comes from `responder(messages, index)` (index = which of the `n` choices), which every test passes
explicitly: the server knows nothing about our prompts.

`log` holds (time.monotonic(), status, fault) per completion request; `counts` the requests, faults and
"cut" choices. `refuse` makes a dead server: every connection is counted in `counts["connections"]` and
dropped before any reply, the same way each time: "reset" closes it at once with a TCP reset (SO_LINGER 0;
a plain close would be a reset only when the request had already arrived unread, else a FIN: which one
depended on thread timing), "close" reads the request and closes with a FIN (a server that drops requests;
aiohttp says ServerDisconnectedError, httpx RemoteProtocolError).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

Responder = Callable[[Any, int], str]  # (chat messages or a raw completion prompt, choice index) -> text


class LoopbackServer:
    """Background chat-completions server; use as a context manager (see module docstring)."""

    def __init__(
        self,
        responder: Responder,
        *,
        latency_s: float = 0.0,
        faults: dict[str, float] | None = None,
        hang_s: float = 2.0,
        seed: int = 0,
        model: str = "loopback-teacher",
        script: list[str] | None = None,
        retry_after: str | None = None,
        refuse: str | None = None,
    ) -> None:
        self.latency_s, self.hang_s, self.model, self.responder = latency_s, hang_s, model, responder
        self.faults = dict(faults or {})
        self.script, self.retry_after, self.refuse = list(script or []), retry_after, refuse
        allowed = {"429", "500", "503", "timeout", "malformed", "length"}
        unknown = (set(self.faults) | set(self.script)) - allowed - {""}
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
        if refuse not in (None, "reset", "close"):
            raise ValueError(f"unknown refuse {refuse!r}; allowed: reset, close")
        self._rng = random.Random(seed)
        self.log: list[tuple[float, int, str]] = []
        self.counts: Counter = Counter()
        self.prompts: Counter = Counter()  # user prompt (or raw completion prompt) -> successful replies
        self.requests: list[tuple[str, dict[str, Any]]] = []  # (path, request body) of the answered requests
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LoopbackServer:
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=4096))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    def _fault(self) -> str | None:
        if self.script:
            return self.script.pop(0) or None
        x = self._rng.random()
        for name, p in self.faults.items():
            if x < p:
                return name
            x -= p
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            self.counts["connections"] += 1
            await self._drop(reader, writer)
            return
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = _content_length(head)
                body = await reader.readexactly(length) if length else b""
                if head.startswith(b"GET "):  # a reachability check (GET /models): no fault, not counted
                    status, payload = 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]}
                else:
                    path = head.split(b" ", 2)[1].decode("latin-1")
                    status, payload = await self._reply(body, path)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                extra = f"Retry-After: {self.retry_after}\r\n" if status in (429, 503) and self.retry_after else ""
                writer.write(
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\nContent-Type: application/json\r\n"
                    f"{extra}Content-Length: {len(data)}\r\nConnection: keep-alive\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _drop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse == "reset":
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(_content_length(head))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        writer.close()

    async def _reply(self, body: bytes, path: str = "/v1/chat/completions") -> tuple[int, Any]:
        self.counts["requests"] += 1
        fault = self._fault()
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault:
            self.counts[fault] += 1
        status = int(fault) if fault in ("429", "500", "503") else 200
        self.log.append((time.monotonic(), status, fault or ""))
        if fault == "429":
            return 429, {"error": {"message": "rate limited", "type": "rate_limit_error"}}
        if fault in ("500", "503"):
            return status, {"error": {"message": "internal error", "type": "server_error"}}
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
        if fault == "malformed":
            return 200, b'{"id": "x", "choices": [ {"message": '
        request = json.loads(body)
        chat = not path.rstrip("/").endswith("/v1/completions")
        asked = request["messages"] if chat else request["prompt"]
        n = int(request.get("n") or 1)
        texts = [self.responder(asked, i) for i in range(n)]
        finish = "stop"
        if fault == "length":
            texts, finish = [t[: len(t) // 2] for t in texts], "length"
            self.counts["cut"] += n
        else:
            self.prompts[asked[-1]["content"] if chat else asked] += 1
        self.requests.append((path, request))
        self.counts["ok"] += 1
        prompt_tokens = sum(len(m["content"].split()) for m in asked) if chat else len(asked.split())
        completion_tokens = sum(len(t.split()) for t in texts)
        if chat:
            choices = [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish}
                for i, t in enumerate(texts)
            ]
        else:
            choices = [{"index": i, "text": t, "finish_reason": finish} for i, t in enumerate(texts)]
        return 200, {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{self.counts['requests']}",
            "object": "chat.completion" if chat else "text_completion",
            "created": 0,
            "model": self.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _content_length(head: bytes) -> int:
    headers = dict(line.split(":", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ":" in line)
    return int(next((v for k, v in headers.items() if k.strip().lower() == "content-length"), "0"))
