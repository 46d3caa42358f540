"""Checks of the zero-haloed buffers (padding.py): `embed_strided` (the general strided, offset
placement), `pad_channels_last` (zero padding, through the parallel `pad_kernel`) and
`pad_and_concatenate` (several inputs side by side along the channels), against
embed_strided_reference. They only move values: every element must be exact."""
import numpy as np

from .. import padding, reference
from .registry import case, checks, normal, short, size_label, triple, widen


def placement_case(batch, size, channels, stride, offset, length):
    stride, offset = triple(stride), triple(offset)
    label = (f"N{batch} {size_label(size)} C{channels} s{short(stride)} o{short(offset)} "
             f"-> {size_label(length)}")
    return case(label, batch=batch, size=tuple(size), channels=channels, stride=stride, offset=offset,
                length=tuple(length))


EMBED_CASES = (placement_case(2, (3, 4, 5), 3, (2, 1, 3), (1, -1, 2), (7, 4, 15)),   # negative offset, cut ends
               placement_case(2, (5, 2, 3), 1, 1, 2, (9, 6, 7)))                      # C = 1, plain padding


@checks("embed_strided", "padding", "padding.py", "reference.py: embed_strided_reference", EMBED_CASES)
def check_embed_strided(case, dtype, width, rng):
    x = normal(rng, (case.batch, *case.size, case.channels), dtype)
    ours = padding.embed_strided(x, case.stride, case.offset, case.length)
    expected = reference.embed_strided_reference(*widen(x), case.stride, case.offset, case.length)
    return [(None, ours, expected, 0)]


def padding_case(batch, size, channels, pad):
    """channels: an int, or a tuple of the channels of inputs written side by side."""
    channels = channels if isinstance(channels, tuple) else (channels,)
    label = f"N{batch} {size_label(size)} C{'+'.join(map(str, channels))} p{short(pad)}"
    return case(label, batch=batch, size=tuple(size), channels=channels, padding=triple(pad))


def padding_reference(x, pad):
    """Zero padding of x by `pad` on both sides, as embed_strided_reference's stride-1 case."""
    length = tuple(s + 2 * p for s, p in zip(x.shape[1:4], pad))
    return reference.embed_strided_reference(x, (1, 1, 1), pad, length)


PAD_CASES = (padding_case(2, (3, 4, 5), 3, (1, 0, 2)), padding_case(2, (3, 1, 2), 1, 1))   # C = 1, H = 1
CONCATENATE_CASES = (padding_case(2, (3, 4, 5), (3, 17), (1, 2, 0)),                      # two inputs
                     padding_case(2, (4, 3, 2), (1,), 0))                                 # one, no padding: no copy


@checks("pad_channels_last", "padding", "padding.py", "reference.py: embed_strided_reference (stride 1)",
        PAD_CASES)
def check_pad_channels_last(case, dtype, width, rng):
    x = normal(rng, (case.batch, *case.size, *case.channels), dtype)
    ours = padding.pad_channels_last(x, case.padding)
    return [(None, ours, padding_reference(*widen(x), case.padding), 0)]


@checks("pad_and_concatenate", "padding", "padding.py",
        "reference.py: embed_strided_reference, then np.concatenate", CONCATENATE_CASES)
def check_pad_and_concatenate(case, dtype, width, rng):
    inputs = tuple(normal(rng, (case.batch, *case.size, c), dtype) for c in case.channels)
    ours = padding.pad_and_concatenate(inputs, case.padding)
    expected = np.concatenate([padding_reference(x, case.padding) for x in widen(*inputs)], axis=4)
    return [(None, ours, expected, 0)]
