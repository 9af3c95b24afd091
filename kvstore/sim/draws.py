"""Uniform integer draws that take exactly what ``random.Random.randint`` and ``choice`` would.

``randint(low, high)`` is ``low + _randbelow(high - low + 1)`` reached through ``randrange``: three Python
calls (0.3-0.4 us) for a draw the simulator makes for every message copy and every client op. These do
the same rejection sampling over ``getrandbits`` in one call, so a seed draws the same values as before.
"""

from __future__ import annotations

import random


def below(rng: random.Random, n: int) -> int:
    """A uniform int in ``[0, n)``, ``n > 0``: what ``rng.randrange(n)`` draws."""
    bits = n.bit_length()
    r = rng.getrandbits(bits)
    while r >= n:
        r = rng.getrandbits(bits)
    return r


def between(rng: random.Random, low: int, high: int) -> int:
    """A uniform int in ``[low, high]``, ``low <= high``: what ``rng.randint(low, high)`` draws."""
    width = high - low + 1
    bits = width.bit_length()
    r = rng.getrandbits(bits)
    while r >= width:
        r = rng.getrandbits(bits)
    return low + r
