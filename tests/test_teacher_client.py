"""The OpenAI-compatible client against the loopback server: truncated replies, Retry-After, dead base URLs."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from fake_openai import LoopbackServer

from mathforge.openai_client import BackendError, OpenAIClient, parse_retry_after, retry_after_s


def echo(messages, index):
    return f"echo[{index}]: {messages[-1]['content']}\nThe answer is: 1"


def ask(client: OpenAIClient, prompts: list[str], n: int = 1):
    async def go():
        try:
            return await asyncio.gather(*(client.chat([{"role": "user", "content": p}], n=n) for p in prompts))
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_replies_cut_at_max_tokens_are_marked_and_counted():
    with LoopbackServer(echo, faults={"length": 0.2}, seed=3) as srv:
        client = OpenAIClient([srv.url], "m", concurrency=8, backoff_s=0.01)
        prompts = [f"question {i}" for i in range(60)]
        outs = ask(client, prompts, n=2)
        cut = srv.counts["cut"]
    assert 10 <= cut <= 40  # ~20% of 60 replies, 2 choices each
    assert client.usage.truncated == cut and client.usage.as_dict()["truncated"] == cut
    n_kept = 0
    for p, out in zip(prompts, outs):
        full = [echo([{"content": p}], i) for i in range(2)]
        kept, n_cut = out.kept()
        assert n_cut in (0, 2) and len(out.finish_reasons) == 2
        assert kept == ([] if n_cut else full)  # a cut text is never among the kept ones
        if n_cut:
            assert out.finish_reasons == ["length", "length"] and out.texts == [t[: len(t) // 2] for t in full]
        n_kept += len(kept)
    assert n_kept == 120 - cut


def test_retry_after_in_seconds_is_waited_out():
    # two 429s asking "Retry-After: 1": the third request comes >= 1 s after each (backoff alone would be ~10 ms)
    with LoopbackServer(echo, script=["429", "429"], retry_after="1") as srv:
        client = OpenAIClient([srv.url], "m", backoff_s=0.01, max_retries=4)
        [out] = ask(client, ["q"])
        log = list(srv.log)
    assert out.texts == [echo([{"content": "q"}], 0)]
    assert [status for _, status, _ in log] == [429, 429, 200]
    assert log[1][0] - log[0][0] >= 1.0 and log[2][0] - log[1][0] >= 1.0
    usage = client.usage.as_dict()
    assert usage["retry_after"] == 2 and usage["retry_after_s"] == 2.0 and usage["retries"] == {"429": 2}


def test_retry_after_is_capped_and_read_as_http_date():
    assert parse_retry_after("120") == 120.0 and parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-3") == 0.0 and parse_retry_after("soon") is None
    # RFC 9110's example date, 10 s after "now"
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0

    class Status(Exception):
        def __init__(self, status_code, headers):
            self.status_code, self.response = status_code, SimpleNamespace(headers=headers)  # lower-case keys

    assert retry_after_s(Status(429, {"retry-after-ms": "250", "retry-after": "5"})) == 0.25  # OpenAI's, finer
    assert retry_after_s(Status(503, {"retry-after": "5"})) == 5.0
    assert retry_after_s(Status(500, {"retry-after": "5"})) is None and retry_after_s(Status(429, {})) is None
    waits = []

    async def record(seconds):
        waits.append(seconds)

    with LoopbackServer(echo, script=["503"], retry_after="3600") as srv:
        client = OpenAIClient([srv.url], "m", backoff_s=0.001, max_retry_after_s=0.2, sleep=record)
        ask(client, ["q"])
    assert len(waits) == 1 and 0.15 < waits[0] <= 0.2  # the hour asked for, capped at max_retry_after_s
    assert client.usage.retry_after == 1 and client.usage.retry_after_s == 0.2


class FakeClock:
    """A clock that only moves when the client sleeps (or the test advances it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


# a dead URL drops each connection with a reset, or reads the request and closes it (a FIN) without a reply
# (aiohttp raises ServerDisconnectedError, which its openai transport maps to a timeout: once taken as "slow")
DROPS = ["reset", "close"]


@pytest.mark.parametrize("drop", DROPS)
def test_a_dead_base_url_is_benched_with_backoff_and_tried_again_later(drop):
    clock = FakeClock()
    with LoopbackServer(echo, refuse=drop) as dead, LoopbackServer(echo) as good:
        client = OpenAIClient(
            [dead.url, good.url], "m", concurrency=1, backoff_s=0.001, bench_s=5.0, sleep=clock.sleep, clock=clock
        )

        async def go(prompts):
            return await asyncio.gather(*(client.chat([{"role": "user", "content": p}]) for p in prompts))

        async def scenario():
            first = await go([f"a{i}" for i in range(20)])
            reached_first = dead.counts["connections"]
            clock.now += 5.0  # the bench window is over: the dead URL gets one more try, then twice as long a bench
            second = await go([f"b{i}" for i in range(20)])
            await client.aclose()
            return first + second, reached_first

        outs, reached_first = asyncio.run(scenario())
        reached, served = dead.counts["connections"], good.counts["ok"]
    assert [o.texts[0] for o in outs] == [echo([{"content": p}], 0) for p in [f"a{i}" for i in range(20)]] + [
        echo([{"content": p}], 0) for p in [f"b{i}" for i in range(20)]
    ]
    assert reached_first == 1  # failed once, then benched for the rest of the window (not tried first every time)
    assert reached == 2 and served == 40
    assert client.usage.benched == {dead.url: 2} and client.usage.failures == 0
    assert client.benched_until[0] - clock.now > 5.0  # second bench: 10 s from its failure


def test_eval_results_report_the_clients_retries_and_truncations(tmp_path):
    import json

    from mathforge.backends import OpenAIBackend
    from mathforge.evaluate.runner import run_eval

    with LoopbackServer(lambda m, i: "So it is 7.\nThe answer is: 7", faults={"429": 0.3, "length": 0.3}) as srv:
        backend = OpenAIBackend([srv.url], "m", backoff_s=0.001, max_retries=20)
        results = run_eval(
            backend=backend, bench="gsm8k", limit=12, chat=True, out=str(tmp_path / "ev"), show_progress=False
        )
        counts = srv.counts
    client = json.loads((tmp_path / "ev" / "results.json").read_text())["client"]
    assert client == results["client"]
    assert counts["429"] > 0 and counts["cut"] > 0
    assert client["retries"] == {"429": counts["429"]} and client["truncated"] == counts["cut"]
    assert client["requests"] == counts["requests"] == 12 + counts["429"] and client["failures"] == 0
    assert client["per_url"] == {srv.url: 12} and client["benched"] == {}


@pytest.mark.parametrize("drop", DROPS)
def test_concurrent_requests_meeting_a_dead_url_bench_it_once(drop):
    with LoopbackServer(echo, refuse=drop) as dead, LoopbackServer(echo) as good:
        client = OpenAIClient([dead.url, good.url], "m", concurrency=8, backoff_s=0.001, bench_s=30.0)
        outs = ask(client, [f"q{i}" for i in range(40)])
        reached = dead.counts["connections"]
    assert [o.texts[0] for o in outs] == [echo([{"content": f"q{i}"}], 0) for i in range(40)]
    assert 1 <= reached <= 8  # only the first wave, already in flight when the URL was benched
    assert client.usage.benched == {dead.url: 1} and client._failures[0] == 1  # one outage, one failure counted


def test_a_url_that_drops_every_request_is_named_as_such_when_the_client_gives_up():
    with LoopbackServer(echo, refuse="close") as dead:
        client = OpenAIClient([dead.url], "m", max_retries=2, backoff_s=0.001)
        with pytest.raises(BackendError) as error:
            ask(client, ["q"])
        reached = dead.counts["connections"]
    assert (
        str(error.value)
        == f"{dead.url}: gave up after 3 attempts: cannot reach the server: connection closed before a reply"
    )
    assert reached == 3 and client.usage.failures == 1


def test_the_start_check_refuses_only_when_no_base_url_answers():
    from mathforge.backends import OpenAIBackend

    with LoopbackServer(echo, refuse="reset") as dead, LoopbackServer(echo) as good:
        assert OpenAIBackend([dead.url, good.url], "m").check() == {
            dead.url: f"cannot reach {dead.url}: connection reset"
        }
        assert OpenAIBackend([good.url], "m").check() == {}
        with pytest.raises(BackendError) as error:
            OpenAIBackend([dead.url, dead.url + "/"], "m").check()
    reset = "connection reset"
    assert str(error.value) == f"cannot reach {dead.url}: {reset}; cannot reach {dead.url}/: {reset}"
