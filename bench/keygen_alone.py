"""Key generation alone, in keysvc's own process pool: the rotation's ceiling.

``python -m bench.keygen_alone ALG KEY_SIZE COUNT`` (run pinned to the
server's core) starts a :class:`keysvc.keygen.KeyGenerator` as ``serve``
does, warms it up, then generates COUNT keys at once and prints the rate.
"""

from __future__ import annotations

import asyncio
import sys
import time

from keysvc.keygen import KeyGenerator
from keysvc.keys import KeySpec


async def _rate(alg: str, key_size: int | None, count: int) -> float:
    generator = KeyGenerator()
    try:
        await generator.warm_up()
        started = time.perf_counter()
        await generator.generate_many([KeySpec(alg, key_size)] * count)
        return count / (time.perf_counter() - started)
    finally:
        await asyncio.to_thread(generator.close)


def main() -> None:
    alg, size, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rate = asyncio.run(_rate(alg, None if size == "-" else int(size), count))
    sys.stdout.write(f"keys/s {rate:.3f}\n")


if __name__ == "__main__":
    main()
