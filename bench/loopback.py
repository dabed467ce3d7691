"""A minimal OpenAI-compatible chat-completions server for the client benchmark (`bench.synth`).

    python -m mathforge.bench.loopback      # prints http://127.0.0.1:PORT/v1, serves until killed

Every request gets the same short reply at once (no faults, no latency): what is measured is the
client's own cost per request. Tests use their own fake server with explicit responders
(tests/fake_openai.py).
"""

from __future__ import annotations

import asyncio
import json

REPLY = "The answer is: 1"


def _body(request: bytes) -> bytes:
    n = int(json.loads(request).get("n") or 1)
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": "loopback",
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}
                for i in range(n)
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 4 * n, "total_tokens": 1 + 4 * n},
        }
    ).encode()


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            length = next(
                (int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.startswith("content-length:")), 0
            )
            data = _body(await reader.readexactly(length)) if length else b"{}"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                + f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve() -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", 0, backlog=4096)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve())
