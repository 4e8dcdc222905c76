"""The machine a benchmark ran on, for its header: figures from one CPU do not carry over to another."""

import os
import platform
from pathlib import Path


def last_level_cache_bytes() -> int:
    """The largest data cache of CPU 0 (the last level), in bytes; 0 if the system does not say."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        if (index / "type").read_text().strip() != "Instruction":
            size = (index / "size").read_text().strip()
            sizes.append(int(size[:-1]) * {"K": 2**10, "M": 2**20, "G": 2**30}[size[-1]] if size[-1] in "KMG"
                         else int(size))
    return max(sizes, default=0)


def describe() -> str:
    """CPU model, cores, cache sizes, bf16 support (AMX / AVX512-BF16), memory; one line each."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
        if kind != "Instruction":
            caches.append(f"L{level} {(index / 'size').read_text().strip()}")
    bf16 = [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return "\n".join([
        f"machine: {fields.get('model name', platform.processor() or platform.machine())}",
        f"cores: {os.cpu_count()}  caches (per core, L3 shared): {', '.join(caches) or 'unknown'}  "
        f"memory: {memory:.0f} GiB",
        f"bf16: {', '.join(bf16) or 'none native'}  python {platform.python_version()}",
    ])


if __name__ == "__main__":
    print(describe())
