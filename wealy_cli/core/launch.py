"""Which devices a run uses, decided the same way by every command.

``--gpus N`` asks for N GPUs per node (one process each); ``--gpus 0`` runs on CPU with
``--workers`` processes. Left unset, a run takes one GPU when CUDA sees one and the CPU otherwise
(or the CPU when ``--workers`` asks for several processes).
Asking for more GPUs than CUDA sees is the user's to fix, in the same words everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from wealy_cli.core.errors import UserError
from wealy_cli.core.settings import Options, option


class DeviceOptions(Options):
    """How many processes a run spreads over, on GPUs or on the CPU."""

    gpus: int | None = option(None, "GPUs per node, one process each; 0 = CPU only.", ge=0,
                              shown_default="1 if CUDA sees a GPU, else 0")
    workers: int = option(1, "Processes on the CPU (with --gpus 0); results do not depend on the number.",
                          ge=1)


@dataclass(frozen=True)
class Devices:
    """The resolved choice: ``accelerator`` "cuda" or "cpu" and processes per node."""

    accelerator: str
    processes: int

    @property
    def on_gpu(self) -> bool:
        return self.accelerator == "cuda"


def cuda_devices() -> int:
    """GPUs CUDA sees (0 without CUDA or without torch's CUDA build)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(gpus: int) -> None:
    """A UserError, in the same words for every command, when CUDA sees fewer than ``gpus`` GPUs."""
    found = cuda_devices() if gpus > 0 else 0
    if gpus > found:
        seen = "no CUDA GPU is visible" if found == 0 else f"only {found} CUDA GPU(s) are visible"
        fewer = f"--gpus {found} or fewer, or " if found else ""
        raise UserError(f"--gpus {gpus}: {seen}; use {fewer}--gpus 0 to run on the CPU (--workers N for N processes)")


def resolve_devices(opts: DeviceOptions) -> Devices:
    """``opts`` → the devices to use, or a UserError saying what was found and what to use."""
    if opts.gpus is None and opts.workers > 1:  # asking for CPU processes is asking for the CPU
        return Devices("cpu", opts.workers)
    gpus = opts.gpus if opts.gpus is not None else min(cuda_devices(), 1)
    check_gpus(gpus)
    if gpus > 0:
        if opts.workers > 1:
            raise UserError(f"--workers {opts.workers} applies to CPU runs (--gpus 0); "
                            f"with --gpus {gpus} there is one process per GPU")
        return Devices("cuda", gpus)
    return Devices("cpu", opts.workers)
