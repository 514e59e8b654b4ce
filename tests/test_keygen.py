"""The key-generation pool: keys in the order asked, chunked, at low priority."""

from __future__ import annotations

import asyncio
import os

from keysvc import keygen
from keysvc.keygen import KeyGenerator
from keysvc.keys import KeySpec


async def test_generate_many_answers_in_the_order_of_the_specs(
    generator: KeyGenerator,
) -> None:
    # More keys than one chunk holds, two algorithms interleaved.
    specs = [
        KeySpec("ES256", None) if i % 3 else KeySpec("EdDSA", None)
        for i in range(keygen.CHUNK_MAX * 2 + 5)
    ]

    made = await generator.generate_many(specs)

    assert [k.alg for k in made] == [s.alg for s in specs]
    assert [k.public_jwk["kty"] for k in made] == [
        "EC" if s.alg == "ES256" else "OKP" for s in specs
    ]
    assert len({k.kid for k in made}) == len(specs)


async def test_generate_many_of_nothing_is_nothing(generator: KeyGenerator) -> None:
    assert await generator.generate_many([]) == []


async def test_workers_run_below_the_priority_of_the_serving_process(
    generator: KeyGenerator,
) -> None:
    parent = os.nice(0)
    # os.nice(0) run in a worker answers the worker's own niceness.
    worker = await asyncio.wrap_future(generator._executor.submit(os.nice, 0))

    assert worker == min(19, parent + keygen.WORKER_NICENESS)
