"""The device a stage runs on: ``auto`` picks CUDA, then MPS, then the CPU."""
from __future__ import annotations

import platform
from pathlib import Path

import torch


class DeviceError(RuntimeError):
    """The requested device is not available on this machine."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": has_mps}
    if name not in available:
        raise DeviceError(f"device must be one of auto, cpu, cuda, mps; got {name!r}")
    if not available[name]:
        found = ", ".join(k for k, ok in available.items() if ok)
        raise DeviceError(f"device {name!r} was requested (params.yaml: device) but is not "
                          f"available on this machine; available: {found}. "
                          f"Set device: auto or one of those.")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return device.type


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
