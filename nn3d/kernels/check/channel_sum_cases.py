"""Checks of the channel sums (channel_sum.py): one, two and masked sums, over chunks and a tail."""
import numpy as np

from .. import channel_sum, reference
from .registry import case, checks, widen

def sums_case(rows, channels, terms):
    return case(f"P{rows} C{channels} {terms}", rows=rows, channels=channels, terms=terms)


CHUNK_ROWS = channel_sum.ROWS_PER_CHUNK
SUMS_CASES = (sums_case(2 * CHUNK_ROWS + 37, 3, "a"),               # two chunks and a tail
              sums_case(2 * CHUNK_ROWS + 37, 3, "a, a(b-s)"), sums_case(2 * CHUNK_ROWS + 37, 3, "masked"),
              sums_case(5, 1, "masked"))                              # less than a chunk, C = 1


@checks("channel_sums", "channel_sums", "channel_sum.py", "reference.py: channel_sums_reference", SUMS_CASES)
def check_channel_sums(case, dtype, width, rng):
    a = (1 + rng.standard_normal((case.rows, case.channels))).astype(dtype)
    b = (3 + rng.standard_normal((case.rows, case.channels))).astype(dtype)
    shift = rng.standard_normal(case.channels)
    mask = np.maximum(rng.standard_normal((case.rows, case.channels)), 0).astype(dtype)   # a ReLU's output
    arguments = {"a": (a,), "a, a(b-s)": (a, b, shift), "masked": (a, b, shift, mask)}[case.terms]
    ours = channel_sum.channel_sums(*arguments)
    expected = reference.channel_sums_reference(*widen(*arguments))
    stack = lambda sums: np.stack(sums if isinstance(sums, tuple) else (sums,))
    return [(None, stack(ours), stack(expected), case.rows)]      # float64 sums: float64's tolerance
