"""What a night ran on, for its record (the runs table's config) and the claim's bundle: the
Python, the versions of the packages a training run depends on, the CUDA build of torch, the
NVIDIA driver and the GPU models. Read without importing torch (its import costs seconds and
would start CUDA in the supervisor): package metadata tells the version and, in its local
part (+cu128), the CUDA it was built for. The versions are the supervisor's interpreter's,
which is the one a run uses unless the target's command names another (`uv run`, say)."""

from __future__ import annotations

import platform
from importlib import metadata

from scheduler.gpus import Gpu, driver_version

PACKAGES = ("torch", "triton", "numpy", "kernels", "tiktoken", "rustbpe", "pyarrow", "autoresearch-tui")


def describe(gpus: list[Gpu], nvml=None) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    torch = versions.get("torch", "")
    build = torch.partition("+")[2]
    cuda = f"{build[2:-1]}.{build[-1]}" if build.startswith("cu") and build[2:].isdigit() else None
    on_gpus = any(gpu.index is not None for gpu in gpus)
    return {"python": platform.python_version(),
            "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
            "packages": versions, "torch_cuda": cuda if on_gpus or cuda else None,
            "driver": driver_version(nvml) if on_gpus else None,
            "gpu_models": sorted({gpu.model for gpu in gpus})}
