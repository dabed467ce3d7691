"""One client for OpenAI-compatible servers (vLLM, SGLang, OpenAI), used by synthesis and evaluation.

- at most `concurrency` requests in flight; several base URLs are load-balanced (the one with the fewest
  requests in flight, then round robin), and a retry goes to another URL;
- 429, 5xx, timeouts, connection errors and malformed responses are retried with exponential backoff
  and jitter; other 4xx fail at once with `BackendError`;
- with several base URLs, one is *benched* (not picked while another URL is free to take the request)
  when it cannot be connected to (refused, unresolved, or reset or closed before any reply) — for `bench_s`,
  doubling with each further failure up to `max_bench_s`, reset by a success — and when a 429/503 says
  `Retry-After` (seconds or an HTTP date; at most `max_retry_after_s`); a request whose every URL is benched
  waits until the first comes back;
- every choice keeps its `finish_reason` (`Completion.finish_reasons`); replies cut at `max_tokens`
  (`"length"`) are counted in `usage.truncated` — the caller decides (synthesis drops them, evaluation
  grades them as the model's answer);
- token usage, retries by cause, failures, truncations, benchings and Retry-After waits are counted in
  `usage`;
- the `openai` async client does the HTTP (auth, timeouts, error mapping), over aiohttp when it is
  installed (about 2.5x less CPU per request than the default transport); requests go through its
  generic `post` with a plain JSON body and the reply stays plain JSON, skipping the typed-parameter
  transformation and the pydantic models (together about 4x less client CPU per request): at hundreds
  of concurrent requests the client's own CPU matters.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mathforge.errors import ConfigError, MathforgeError

Message = dict[str, str]


class BackendError(MathforgeError, RuntimeError):
    """A request that failed for good (retries exhausted or a non-retryable error)."""


@dataclass
class Completion:
    texts: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    finish_reasons: list[str] = field(default_factory=list)  # per text where the server said ("stop", "length")

    def kept(self) -> tuple[list[str], int]:
        """(the texts not cut at max_tokens, how many were cut): a `"length"` finish means a partial reply."""
        cut = {i for i, why in enumerate(self.finish_reasons) if why == "length"}
        return [t for i, t in enumerate(self.texts) if i not in cut], len(cut)


@dataclass
class Usage:
    requests: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: Counter = field(default_factory=Counter)
    failures: int = 0
    truncated: int = 0  # choices whose finish_reason was "length"
    benched: Counter = field(default_factory=Counter)  # base URL -> times set aside (connection failures)
    retry_after: int = 0  # 429/503 replies carrying a Retry-After that was honoured
    retry_after_s: float = 0.0  # the seconds those asked for (after the max_retry_after_s cap)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "completions": self.completions,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "retries": dict(self.retries),
            "failures": self.failures,
            "truncated": self.truncated,
            "benched": dict(self.benched),
            "retry_after": self.retry_after,
            "retry_after_s": round(self.retry_after_s, 3),
        }


class _Malformed(ValueError):
    """A 2xx reply that is not a usable completion (retried like a server error)."""


def _http_client():
    try:
        from openai import DefaultAioHttpClient

        return DefaultAioHttpClient()
    except (ImportError, RuntimeError):  # the aiohttp extra is missing: the default httpx transport
        return None


class OpenAIClient:
    """Chat and text completions from one or more OpenAI-compatible servers (see the module doc)."""

    def __init__(
        self,
        base_urls: list[str] | str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 64,
        max_retries: int = 6,
        timeout_s: float = 120.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_retry_after_s: float = 60.0,
        bench_s: float = 1.0,
        max_bench_s: float = 60.0,
        seed: int = 0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        usage: Usage | None = None,
        per_url: Counter | None = None,
    ) -> None:
        """`usage` and `per_url`, when given, are counted into (a backend shares them across its clients).
        `sleep` and `clock` are what waits and tells the time (tests pass a fake pair)."""
        from openai import AsyncOpenAI

        base_urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not base_urls:
            raise ConfigError("backend.base_urls needs at least one URL")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        self.model, self.max_retries = model, max_retries
        self.backoff_s, self.max_backoff_s, self._sleep, self._clock = backoff_s, max_backoff_s, sleep, clock
        self.max_retry_after_s, self.bench_s, self.max_bench_s = max_retry_after_s, bench_s, max_bench_s
        self.base_urls = base_urls
        self.clients = [
            AsyncOpenAI(
                base_url=u, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout_s, http_client=_http_client()
            )
            for u in base_urls
        ]
        self.in_flight = [0] * len(base_urls)
        self.benched_until = [0.0] * len(base_urls)  # clock time before which a URL is set aside
        self._failures = [0] * len(base_urls)  # consecutive connection failures per URL
        self._benched_at = [float("-inf")] * len(base_urls)  # when each URL was last benched for a failure
        self.per_url: Counter = per_url if per_url is not None else Counter()
        self._next = 0
        self._limit = asyncio.Semaphore(concurrency)
        self._rng = random.Random(seed)
        self.usage = usage if usage is not None else Usage()

    def _pick(self, avoid: int | None) -> int:
        """A URL not benched (else the one back first), then not the one just failed, then the least busy, then
        round robin."""
        count, now = len(self.clients), self._clock()
        order = sorted(
            range(count),
            key=lambda i: (
                max(0.0, self.benched_until[i] - now),
                i == avoid,
                self.in_flight[i],
                (i - self._next) % count,
            ),
        )
        self._next = (order[0] + 1) % count
        return order[0]

    def _bench(self, url: int, error: BaseException, started: float) -> None:
        """Sets `url` aside after a failure that says so: Retry-After on a 429/503 for the time it asks (capped);
        a connection that could not be made for bench_s * 2^(failures - 1) (capped), where attempts that began
        before the URL's last benching (concurrent requests meeting the same outage) count as one failure."""
        now = self._clock()
        wait = retry_after_s(error)
        if wait is not None:
            wait = min(wait, self.max_retry_after_s)
            self.usage.retry_after += 1
            self.usage.retry_after_s += wait
            self.benched_until[url] = max(self.benched_until[url], now + wait)
        elif len(self.clients) > 1 and _unreachable(error):  # one URL alone: the backoff spaces its retries
            if started < self._benched_at[url]:
                return
            self._failures[url] += 1
            self._benched_at[url] = now
            span = min(self.max_bench_s, self.bench_s * 2 ** (self._failures[url] - 1))
            self.benched_until[url] = max(self.benched_until[url], now + span)
            self.usage.benched[self.base_urls[url]] += 1

    async def chat(
        self,
        messages: list[Message],
        *,
        n: int = 1,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> Completion:
        """`n` chat completions of `messages`."""
        return await self._collect("chat", {"messages": messages}, n, temperature, top_p, max_tokens, seed, stop)

    async def complete(
        self,
        prompt: str,
        *,
        n: int = 1,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> Completion:
        """`n` raw text completions of `prompt` (the /completions endpoint)."""
        return await self._collect("text", {"prompt": prompt}, n, temperature, top_p, max_tokens, seed, stop)

    async def _collect(self, kind: str, payload: dict[str, Any], n: int, *sampling: Any) -> Completion:
        """Asks again for the rest when a server returns fewer than `n` choices."""
        out = await self._request(kind, payload, n, *sampling)
        while len(out.texts) < n:
            more = await self._request(kind, payload, n - len(out.texts), *sampling)
            out = Completion(
                out.texts + more.texts,
                out.prompt_tokens + more.prompt_tokens,
                out.completion_tokens + more.completion_tokens,
                out.model,
                out.finish_reasons + more.finish_reasons,
            )
        out.texts, out.finish_reasons = out.texts[:n], out.finish_reasons[:n]
        return out

    async def _request(
        self,
        kind: str,
        payload: dict[str, Any],
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int | None,
        stop: list[str] | None,
    ) -> Completion:
        import openai

        retryable = (
            openai.RateLimitError,
            openai.InternalServerError,
            openai.APITimeoutError,
            openai.APIConnectionError,
            openai.APIResponseValidationError,
            ValueError,
        )
        params: dict[str, Any] = {
            "model": self.model,
            "n": n,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            **payload,
        }
        if seed is not None and seed >= 0:
            params["seed"] = seed
        if stop:
            params["stop"] = list(stop)[:4]  # the API takes at most four stop strings
        last: Exception | None = None
        url = None
        delay = 0.0
        async with self._limit:
            for attempt in range(self.max_retries + 1):
                url = self._pick(avoid=url if len(self.clients) > 1 else None)
                wait = max(delay, self.benched_until[url] - self._clock())
                if wait > 0:
                    await self._sleep(wait)
                self.in_flight[url] += 1
                self.usage.requests += 1
                started = self._clock()
                try:
                    path = "/chat/completions" if kind == "chat" else "/completions"
                    reply = await self.clients[url].post(path, body=params, cast_to=object)
                    completion = _parse(reply, kind, self.model)
                except retryable as error:
                    status = getattr(error, "status_code", None)
                    cause = "malformed" if isinstance(error, ValueError) else type(error).__name__  # incl. bad JSON
                    self.usage.retries[str(status) if status else cause] += 1
                    last = error
                    self._bench(url, error, started)
                    delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + self._rng.random())
                    continue
                except openai.APIStatusError as error:  # 4xx other than 429: the request itself is wrong
                    self.usage.failures += 1
                    raise BackendError(f"{self.base_urls[url]}: HTTP {error.status_code}: {error.message}") from None
                finally:
                    self.in_flight[url] -= 1
                self._failures[url] = 0
                self.per_url[self.base_urls[url]] += 1
                self.usage.truncated += completion.finish_reasons.count("length")
                self.usage.completions += len(completion.texts)
                self.usage.prompt_tokens += completion.prompt_tokens
                self.usage.completion_tokens += completion.completion_tokens
                return completion
        self.usage.failures += 1
        where = self.base_urls[url] if url is not None else ", ".join(self.base_urls)
        raise BackendError(f"{where}: gave up after {self.max_retries + 1} attempts: {_reason(last)}")

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()


def connection_problem(error: BaseException | None) -> str | None:
    """What went wrong when `error` (or an exception it was raised from) is a failure to connect: "connection
    refused", "host name not resolved", "connection closed before a reply", …; None when the server was reached.
    The transports wrap these deep (aiohttp's refused or dropped connection even surfaces as an APITimeoutError)."""
    import socket

    seen = 0
    while error is not None and seen < 12:
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, socket.gaierror):
            return f"host name not resolved ({error.strerror or error})"
        if isinstance(error, (ConnectionResetError, ConnectionAbortedError)):
            return "connection reset"
        if type(error).__name__ in ("ClientConnectorError", "ConnectError") and error.__cause__ is None:
            return f"cannot connect ({error})"
        if type(error).__name__ == "ServerDisconnectedError":  # aiohttp: closed (a FIN, not a reset) before a reply
            return "connection closed before a reply"
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def _unreachable(error: BaseException) -> bool:
    """Whether a failed attempt says the server is not there (no connection, or one dropped before a reply),
    rather than slow (a timeout) or failing this request (a status, a malformed reply)."""
    import openai

    if isinstance(error, openai.APITimeoutError):  # aiohttp reports a refused or dropped connection as a timeout
        return connection_problem(error) is not None
    return isinstance(error, openai.APIConnectionError)


def retry_after_s(error: BaseException, now: float | None = None) -> float | None:
    """The wait a 429/503 reply asks for, in seconds (>= 0): its `retry-after-ms` header (OpenAI's), else its
    Retry-After (delay-seconds or an HTTP date); None for other errors or without a readable header. `now`: the
    wall-clock time for HTTP dates."""
    response = getattr(error, "response", None)
    if getattr(error, "status_code", None) not in (429, 503) or response is None:
        return None
    millis = parse_retry_after(response.headers.get("retry-after-ms") or "", now)
    if millis is not None:
        return millis / 1000.0
    value = response.headers.get("retry-after")
    return parse_retry_after(value, now) if value else None


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: "120" or "Wed, 21 Oct 2015 07:28:00 GMT"; None if unreadable."""
    from email.utils import parsedate_to_datetime

    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _reason(error: BaseException | None) -> str:
    """One line on why the last attempt failed, a refused or unresolvable connection said as such."""
    problem = connection_problem(error)
    if problem is not None:
        return f"cannot reach the server: {problem}"
    return f"{type(error).__name__}: {error}"


def check_reachable(base_url: str, *, api_key: str | None = None, timeout_s: float = 5.0) -> None:
    """One quick GET <base_url>/models: a BackendError "cannot reach <url>: connection refused" (or the
    other transport problem) within about `timeout_s`, instead of minutes of retries before a long run.
    Any HTTP reply, an error status included, means the server is there."""
    import urllib.error
    import urllib.request

    url = base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key or 'EMPTY'}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answered (404 for servers without /models, 401 for a wrong key: later requests say which)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        problem = connection_problem(reason if isinstance(reason, BaseException) else error)
        if problem is None:
            timed_out = isinstance(reason, TimeoutError) or "timed out" in str(reason)
            problem = f"no reply within {timeout_s:g} s" if timed_out else str(reason)
        raise BackendError(f"cannot reach {base_url}: {problem}") from None


def unreachable(base_urls: list[str], *, api_key: str | None = None, timeout_s: float = 5.0) -> dict[str, str]:
    """{url: why} for each of `base_urls` no server answers at (`check_reachable`, all side by side); {} when
    every one answers. The caller decides: with several URLs, a run can start on those that answer (the
    client benches the others until they do)."""
    from concurrent.futures import ThreadPoolExecutor

    def problem(url: str) -> str | None:
        try:
            check_reachable(url, api_key=api_key, timeout_s=timeout_s)
        except BackendError as error:
            return str(error)
        return None

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(base_urls)))) as pool:
        problems = list(pool.map(problem, base_urls))
    return {url: why for url, why in zip(base_urls, problems) if why is not None}


def _parse(data: Any, kind: str, model: str) -> Completion:
    """The texts (in choice order) and token usage of a decoded completions reply; `_Malformed` if it has none."""
    try:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        texts = [c["message"]["content"] if kind == "chat" else c["text"] for c in choices]
        reasons = [str(c.get("finish_reason") or "") for c in choices]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise _Malformed(f"malformed reply ({type(error).__name__}: {error})") from None
    if not texts or any(not isinstance(t, str) for t in texts):
        raise _Malformed(f"malformed reply: choices without text ({texts!r:.80})")
    usage = data.get("usage") or {}
    return Completion(
        texts,
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        str(data.get("model") or model),
        reasons,
    )
