"""--optimizer muon: which weights Muon trains, the state that checkpoints carry, the LRs the schedule drives."""

from __future__ import annotations

import copy

import pytest
import torch

from utils.core.errors import CheckpointError, ConfigError
from utils.lm.model import ModelConfig, build_model
from utils.train.loop import LoopConfig, lr_lambda
from utils.train.optimizers import MuonWithAdamW, build_optimizer, hidden_matrices, learning_rates, lr_fraction

LAYERS = 2
MATRICES_PER_LAYER = 7  # q, k, v, o, gate, up, down


def _model(seed: int = 0, tied: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                   tie_word_embeddings=tied))


def _config(**values: object) -> LoopConfig:
    return LoopConfig(optimizer="muon", learning_rate=1e-3, muon_learning_rate=4e-3, **values)


def _steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, count: int, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        ids = torch.randint(0, 100, (2, 8), generator=generator)
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("tied", [True, False])
def test_muon_trains_the_hidden_matrices_and_adamw_everything_else(tied: bool) -> None:
    model = _model(tied=tied)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = sorted(names[id(p)] for p in hidden_matrices(model))
    assert len(muon_names) == LAYERS * MATRICES_PER_LAYER
    assert all(n.startswith("model.layers.") and n.endswith("_proj.weight") for n in muon_names)

    optimizer = build_optimizer(model, _config(), "cpu")
    assert isinstance(optimizer, MuonWithAdamW)
    muon_ids = [id(p) for g in optimizer.muon.param_groups for p in g["params"]]
    adamw_ids = [id(p) for g in optimizer.adamw.param_groups for p in g["params"]]
    assert sorted(muon_ids) == sorted(id(p) for p in hidden_matrices(model))
    assert sorted(muon_ids + adamw_ids) == sorted(id(p) for p in model.parameters())  # each weight exactly once
    adamw_names = {names[i] for i in adamw_ids}
    assert "model.embed_tokens.weight" in adamw_names and ("lm_head.weight" in adamw_names) is not tied
    decayed = {names[id(p)] for g in optimizer.adamw.param_groups if g["weight_decay"] for p in g["params"]}
    assert all(not n.endswith("norm.weight") for n in decayed)
    assert optimizer.muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"


def test_adamw_is_plain_torch_adamw_over_every_weight() -> None:
    model = _model()
    optimizer = build_optimizer(model, LoopConfig(), "cpu")
    assert type(optimizer) is torch.optim.AdamW
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_the_schedule_drives_both_learning_rates_and_both_are_reported() -> None:
    optimizer = build_optimizer(_model(), _config(), "cpu")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup_steps=2, total_steps=10))
    assert learning_rates(optimizer) == pytest.approx({"lr": 0.5e-3, "muon_lr": 2e-3})
    optimizer.step()
    scheduler.step()
    assert learning_rates(optimizer) == pytest.approx({"lr": 1e-3, "muon_lr": 4e-3})
    assert lr_fraction(optimizer) == pytest.approx(1.0)
    # The children step with the scheduled LR: their group dicts are the combined optimizer's.
    assert optimizer.muon.param_groups[0]["lr"] == pytest.approx(4e-3)
    assert learning_rates(build_optimizer(_model(), LoopConfig(learning_rate=2e-3), "cpu")) == {"lr": 2e-3}


def test_state_dict_round_trip_continues_bit_for_bit() -> None:
    """Two steps, save, restore into a fresh model + optimizer, two more: the same weights as four straight."""
    straight = _model()
    optimizer = build_optimizer(straight, _config(), "cpu")
    _steps(straight, optimizer, 2)
    saved_model = {k: v.clone() for k, v in straight.state_dict().items()}
    saved_state = copy.deepcopy(optimizer.state_dict())  # a checkpoint's copy, not the live buffers
    _steps(straight, optimizer, 2, seed=2)

    resumed = _model(seed=99)
    resumed.load_state_dict(saved_model)
    restored = build_optimizer(resumed, _config(), "cpu")
    scheduler = torch.optim.lr_scheduler.LambdaLR(restored, lambda step: 1.0)
    restored.load_state_dict(saved_state)
    assert set(saved_state) == {"muon", "adamw"} and saved_state["muon"]["state"]  # momentum buffers saved
    _steps(resumed, restored, 2, seed=2)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    scheduler.step()  # after load_state_dict the scheduler still reaches the children's groups
    assert restored.muon.param_groups[0] is restored.param_groups[0]


def test_adamw_state_is_refused_by_muon() -> None:
    model = _model()
    adamw = build_optimizer(model, LoopConfig(), "cpu")
    with pytest.raises(CheckpointError, match="another optimizer"):
        build_optimizer(model, _config(), "cpu").load_state_dict(adamw.state_dict())


def test_muon_without_trainable_matrices_is_an_error() -> None:
    model = _model()
    for p in hidden_matrices(model):
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no hidden weight matrices"):
        build_optimizer(model, _config(), "cpu")


def test_bad_muon_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="muon_learning_rate"):
        LoopConfig(muon_learning_rate=0).validate()
    with pytest.raises(ConfigError, match="muon_momentum"):
        LoopConfig(muon_momentum=1.0).validate()


def test_wsd_holds_the_peak_then_decays_linearly_to_zero() -> None:
    wsd = lr_lambda(warmup_steps=10, total_steps=100, schedule="wsd")
    assert wsd(0) == pytest.approx(0.1) and wsd(9) == pytest.approx(1.0)
    assert [wsd(s) for s in (10, 50, 79)] == [1.0, 1.0, 1.0]  # stable until the last 20 % of the steps
    assert [wsd(s) for s in (80, 90, 99, 100)] == pytest.approx([1.0, 0.5, 0.05, 0.0])
    cosine = lr_lambda(warmup_steps=10, total_steps=100)
    assert cosine(50) < 1.0 and cosine(100) == pytest.approx(0.1)
