"""Runs on several processes (torchrun, or `accelerate launch --config_file config/accelerate/ddp.yaml`): DDP only,
outputs written by the main process alone, and stop decisions every process takes at the same step.

Accelerate reads the launcher's choice from the environment (`accelerate launch` turns a config's
`distributed_type: FSDP` or `DEEPSPEED` into ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED), so a user's saved
default config can switch a run to sharded training without any flag of ours. Our checkpoints and exports save the
whole model from the main process, which under sharding holds only its shard: those runs are refused up front.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from utils.core.errors import ConfigError

DDP_CONFIG = "config/accelerate/ddp.yaml"
UNSUPPORTED_BACKENDS = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
                        "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}
T = TypeVar("T")


def refuse_unsupported_distribution() -> None:
    """ConfigError when the launcher selected a sharded backend that Lumi's checkpoints do not support."""
    from accelerate.utils import parse_flag_from_env

    for variable, backend in UNSUPPORTED_BACKENDS.items():
        if parse_flag_from_env(variable):
            raise ConfigError(
                f"{backend} was selected ({variable}=true, which `accelerate launch` sets from distributed_type in "
                f"its config file, by default ~/.cache/huggingface/accelerate/default_config.yaml). Lumi saves "
                f"checkpoints and exports for DDP only; under {backend} they would hold one shard. Launch with "
                f"`accelerate launch --config_file {DDP_CONFIG}` (make pretrain-multi-gpu) or with torchrun.")


def process_state() -> Any:
    """Accelerate's process-wide state (rank, process count, device); initialises torch.distributed under torchrun.
    The trainers and Accelerator built later share it."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def on_main_process(state: Any, compute: Callable[[], T]) -> T:
    """`compute()` on the main process only; every process receives its result, or its exception re-raised."""
    payload: list[Any] = [None]
    if state.is_main_process:
        try:
            payload = [(compute(), None)]
        except Exception as exc:  # handed to every process, which raises it: none waits forever
            payload = [(None, exc)]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(payload)
    value, error = payload[0]
    if error is not None:
        raise error
    return value


def any_process(flag: bool) -> bool:
    """True on every process when it is True on any: a time limit that one process reaches a step before another
    would otherwise leave the other waiting in the next all-reduce forever."""
    import torch

    state = process_state()
    if state.num_processes == 1:
        return flag
    value = torch.tensor([int(flag)], device=state.device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())
