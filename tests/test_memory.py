"""nn3d.memory: the glibc malloc settings are applied at import on glibc Linux, skipped elsewhere."""
import platform

import nn3d


def test_heap_buffers_on_glibc_linux_only():
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert nn3d.memory.keep_large_buffers_in_heap() is on_glibc
    assert isinstance(nn3d.memory.HEAP_BUFFERS, bool)
