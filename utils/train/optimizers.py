"""The optimizers stage 02 trains with: AdamW, or Muon for the hidden matrices with AdamW for everything else.

`--optimizer muon` hands every 2-D weight inside the decoder layers (attention and MLP projections) to
`torch.optim.Muon` and the embedding (tied with the LM head), the norms and anything else to AdamW, each with its own
learning rate and weight decay. Muon orthogonalises each matrix's momentum (Newton-Schulz), which only makes sense
for hidden matrices: the embedding is a lookup table, not a linear map between hidden states, and vectors have no
singular values.

`adjust_lr_fn="match_rms_adamw"` (Moonshot's Moonlight rule) scales each Muon update to the RMS AdamW's updates have
(0.2 x sqrt(max(rows, cols))), so both groups use learning rates and decoupled weight decay of the same scale, a
preset's AdamW value is a sound starting point for the Muon one, and one LR serves the square attention matrices
and the 2.75x-wide MLP matrices alike. The "original" rule (Keller Jordan's, max(1, rows/cols)^0.5) wants a Muon LR
about 10-50x AdamW's, so every preset would need two unrelated LR scales.
"""

from __future__ import annotations

from typing import Any

import torch

from utils.core.errors import CheckpointError, ConfigError

OPTIMIZERS = ("adamw", "muon")
MUON_ADJUST_LR = "match_rms_adamw"
ROLE = "role"  # a key of every param group: which optimizer and LR it belongs to (for logging)


class MuonWithAdamW(torch.optim.Optimizer):
    """torch.optim.Muon and torch.optim.AdamW stepped as one optimizer.

    Accelerate, the LR scheduler, the grad scaler and the checkpoint code all take one `Optimizer`: this object's
    `param_groups` are the two optimizers' own group dicts (so a scheduler's LR reaches them), and its state dict is
    theirs side by side. `load_state_dict` replaces the children's group dicts, hence the relink after it.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__(muon.param_groups + adamw.param_groups, defaults={})

    def _relink(self) -> None:
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise CheckpointError(f"optimizer state holds {sorted(state_dict)[:4]}, not the Muon + AdamW pair: it was "
                              f"saved by another optimizer")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._relink()


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D weights Muon trains: every matrix except the input embedding and the output head (tied or not)."""
    excluded = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings()
    if head is not None:
        excluded.add(id(head.weight))
    return [p for p in model.parameters() if p.requires_grad and p.ndim == 2 and id(p) not in excluded]


def _adamw_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not norms or biases)."""
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay, ROLE: "adamw"},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, ROLE: "adamw"}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, config: Any, device_type: str) -> torch.optim.Optimizer:
    """AdamW (fused where available) for every weight, or Muon for the hidden matrices and AdamW for the rest.
    `config` is a LoopConfig (optimizer, learning_rate, weight_decay, adam_*, muon_*)."""
    params = [p for p in model.parameters() if p.requires_grad]
    adamw_kwargs = {"lr": config.learning_rate, "betas": (config.adam_beta1, config.adam_beta2),
                    "eps": config.adam_epsilon, "fused": device_type in ("cuda", "cpu")}
    if config.optimizer == "adamw":
        return torch.optim.AdamW(_adamw_groups(params, config.weight_decay), **adamw_kwargs)
    if config.optimizer != "muon":
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")
    matrices = hidden_matrices(model)
    if not matrices:
        raise ConfigError("--optimizer muon found no hidden weight matrices to train (are they frozen?)")
    muon_ids = {id(p) for p in matrices}
    muon = torch.optim.Muon([{"params": matrices, ROLE: "muon"}], lr=config.muon_learning_rate,
                            weight_decay=config.muon_weight_decay, momentum=config.muon_momentum,
                            adjust_lr_fn=MUON_ADJUST_LR)
    rest = [p for p in params if id(p) not in muon_ids]
    adamw = torch.optim.AdamW(_adamw_groups(rest, config.weight_decay), **adamw_kwargs)
    return MuonWithAdamW(muon, adamw)


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The current LR of each optimizer: {"lr": AdamW's} plus {"muon_lr": Muon's} when Muon trains."""
    rates: dict[str, float] = {}
    for group in optimizer.param_groups:
        key = "muon_lr" if group.get(ROLE) == "muon" else "lr"
        rates.setdefault(key, float(group["lr"]))
    return rates


def lr_fraction(optimizer: torch.optim.Optimizer) -> float:
    """Where the schedule stands: the current LR over the peak (the same factor multiplies every group)."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) / float(group["initial_lr"])
