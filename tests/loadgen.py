"""A steady multi-worker load against a proxy in front of the simulator, shared by the
refresh-ahead test (which asserts counts) and the gate benchmark (which prints figures)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from proxy.app import METRICS, create_app
from proxy.settings import load_settings
from proxy.sim import SIM_STATE, SimConfig, start_sim
from tests.conftest import start_app
from tests.simfixtures import gated_settings, headers


@dataclass
class LoadResult:
    requests: int = 0
    failures: int = 0
    latencies_s: list[float] = field(default_factory=list)
    held_after_warmup: int = 0
    counters: dict[str, Any] = field(default_factory=dict)

    def pct_ms(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


async def steady_load(
    *,
    lifetimes: int,
    ttl_s: float,
    refresh_latency_s: float,
    refresh_ahead: bool,
    connections: int = 2,
    workers_per_connection: int = 6,
    mode: str = "strict",
) -> LoadResult:
    """Workers loop over `lifetimes` token lifetimes; the first (cold) validate is excluded
    from the hold count, since no proxy can know a token it has never seen."""
    # The margin's slack over the window (0.5 s) stays above what a loaded 2-core machine can
    # delay a request by; production's is 270 s.
    window_s, margin_s = 0.1, 0.6
    sim_runner, sim_port = await start_sim(
        SimConfig(
            window_s=window_s,
            token_ttl_s=ttl_s,
            refresh_latency_s=refresh_latency_s,
            request_latency_s=0.01,
            mode=mode,  # type: ignore[arg-type]  # validated by SimConfig
        )
    )
    sim_url = f"http://127.0.0.1:{sim_port}"
    settings = load_settings(
        None,
        upstream_url=sim_url,
        upload_upstream_url=sim_url,
        log_level="warning",
        log_format="console",
        **gated_settings(
            window_s,
            ttl_s,
            margin_s,
            refresh_ahead_s=(ttl_s - margin_s) / 2 if refresh_ahead else 0,
        ),
    )
    proxy = await start_app(create_app(settings))
    metrics = proxy.app[METRICS]
    result = LoadResult()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            consumers = [f"load-{i}" for i in range(connections)]
            warm = [s.get(proxy.url + "/crm/contacts", headers=headers(c)) for c in consumers]
            for resp in await asyncio.gather(*warm):
                resp.release()
            held_warm = _held_count(metrics)
            deadline = time.monotonic() + lifetimes * ttl_s

            async def worker(consumer: str) -> None:
                while time.monotonic() < deadline:
                    started = time.monotonic()
                    async with s.get(proxy.url + "/crm/contacts", headers=headers(consumer)) as r:
                        await r.read()
                        result.requests += 1
                        result.failures += r.status != 200
                    result.latencies_s.append(time.monotonic() - started)

            await asyncio.gather(
                *(worker(c) for c in consumers for _ in range(workers_per_connection))
            )
            result.held_after_warmup = _held_count(metrics) - held_warm
        result.counters = sim_runner.app[SIM_STATE].counters()
    finally:
        await proxy.stop()
        await sim_runner.cleanup()
    return result


def _held_count(metrics: Any) -> int:
    for family in metrics.hold_duration.collect():
        for sample in family.samples:
            if sample.name.endswith("_count"):
                return int(sample.value)
    return 0
