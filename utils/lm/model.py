"""Model presets: LLaMA-shaped `LlamaForCausalLM` configs from JSON, with exact parameter counts.

We write no model code: a preset is a set of `LlamaConfig` fields (RMSNorm, SwiGLU, RoPE, no biases,
optional GQA, tied embeddings), so the result stays loadable by AutoModelForCausalLM, PEFT, TRL and
lm-eval. `count_parameters` computes the exact count from the shape alone, so preset labels can be
checked without allocating a model (the original Lumi's labels were off by 2-4x).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from utils.core.config import read_json_config, validate_mapping
from utils.core.errors import ConfigError

if TYPE_CHECKING:  # transformers is slow to import; only the builders need it
    from transformers import LlamaConfig, LlamaForCausalLM

PRESET_DIR = Path(__file__).resolve().parents[2] / "config"
PRESET_NAMES = ("tiny", "small", "base", "advanced_example")
ABLATION_FIELDS = {"norm": "rmsnorm", "norm_position": "pre", "position_embedding": "rope"}  # the standard values


@dataclass
class ModelConfig:
    """The LlamaConfig fields a preset may set. Anything else is an error, not a silent default."""

    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None  # None = multi-head attention (kv heads == heads)
    vocab_size: int = 32768
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    # Ablation switches (utils/lm/ablations.py): anything but these defaults is no longer a plain Llama.
    norm: Literal["rmsnorm", "none"] = "rmsnorm"
    norm_position: Literal["pre", "post"] = "pre"
    position_embedding: Literal["rope", "none"] = "rope"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not divisible by "
                             f"num_key_value_heads {self.kv_heads}")
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.norm == "none" and self.norm_position != "pre":
            raise ValueError("norm_position 'post' needs a norm: with norm 'none' there is nothing to move")

    @property
    def ablations(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ABLATION_FIELDS}

    @property
    def is_plain_llama(self) -> bool:
        return all(getattr(self, name) == default for name, default in ABLATION_FIELDS.items())

    def shape(self) -> dict[str, Any]:
        """What a checkpoint records and a resume must match: every field, the ablation switches only when set
        (so a checkpoint from before they existed still matches the standard model)."""
        fields = dataclasses.asdict(self)
        for name, default in ABLATION_FIELDS.items():
            if fields[name] == default:
                del fields[name]
        return fields

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class ModelPreset:
    name: str
    label: str
    params_millions: float  # the label's claim, checked against count_parameters by the tests
    description: str
    model: ModelConfig
    training: dict[str, Any] = dataclasses.field(default_factory=dict)  # stage 02 defaults for this size


@dataclass(frozen=True)
class ParameterCount:
    total: int
    non_embedding: int  # total minus the token embedding and an untied output head

    def __str__(self) -> str:
        return f"{self.total / 1e6:.2f}M total, {self.non_embedding / 1e6:.2f}M non-embedding"


def preset_path(path_or_name: str | Path) -> Path:
    """A preset's file: a path as given, or a bare name (tiny, small, ...) in config/."""
    path = Path(path_or_name)
    return PRESET_DIR / f"{path_or_name}.json" if not path.suffix and not path.exists() else path


def load_preset(path_or_name: str | Path) -> ModelPreset:
    """Load `config/<name>.json` or a path; unknown keys anywhere are errors that name the file."""
    path = preset_path(path_or_name)
    data = read_json_config(path)
    source = str(path)
    header = {k: v for k, v in data.items() if k not in ("model", "training")}
    missing = {"name", "label", "params_millions", "description", "model"} - set(data)
    if missing:
        raise ConfigError(f"{source}: missing keys {sorted(missing)} in model preset")
    header = validate_mapping(ModelPreset, header, source)
    model_values = validate_mapping(ModelConfig, data["model"], f"{source} (model)")
    try:
        model = ModelConfig(**model_values)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    training = data.get("training", {})
    if not isinstance(training, dict):
        raise ConfigError(f"{source}: 'training' must be an object of stage 02 settings")
    return ModelPreset(model=model, training=training, **header)


def count_parameters(model: ModelConfig) -> ParameterCount:
    """Exact parameter count of LlamaForCausalLM with this shape (no biases, SwiGLU, RMSNorm weights)."""
    h, layers = model.hidden_size, model.num_hidden_layers
    q_and_o = 2 * h * model.num_attention_heads * model.head_dim
    k_and_v = 2 * h * model.kv_heads * model.head_dim
    mlp = 3 * h * model.intermediate_size  # gate, up, down projections
    norm = 0 if model.norm == "none" else h
    per_layer = q_and_o + k_and_v + mlp + 2 * norm  # input and post-attention RMSNorm
    embedding = model.vocab_size * h
    head = 0 if model.tie_word_embeddings else model.vocab_size * h
    total = embedding + layers * per_layer + norm + head  # + final RMSNorm
    return ParameterCount(total=total, non_embedding=total - embedding - head)


def to_llama_config(model: ModelConfig, **overrides: Any) -> "LlamaConfig":
    """A LlamaConfig, or for an ablated preset the LumiLlamaConfig that records the ablations."""
    fields = dataclasses.asdict(model)
    for name in ABLATION_FIELDS:
        del fields[name]
    fields["num_key_value_heads"] = model.kv_heads
    fields.update(overrides)
    fields.update(attention_bias=False, mlp_bias=False, hidden_act="silu")
    if model.is_plain_llama:
        from transformers import LlamaConfig

        return LlamaConfig(**fields)
    from utils.lm.ablations import LumiLlamaConfig

    return LumiLlamaConfig(**model.ablations, **fields)


def build_model(model: ModelConfig, attn_implementation: str = "sdpa", **overrides: Any) -> "LlamaForCausalLM":
    """LlamaForCausalLM for a standard preset; LumiLlamaForCausalLM (a subclass) for an ablated one."""
    config = to_llama_config(model, **overrides)
    config._attn_implementation = attn_implementation
    if model.is_plain_llama:
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM(config)
    from utils.lm.ablations import LumiLlamaForCausalLM

    return LumiLlamaForCausalLM(config)


def zero_output_projections(model: "LlamaForCausalLM") -> None:
    """Zero every decoder layer's attention output (o_proj) and MLP down projection: each residual branch then
    adds nothing at step 0 and the network starts as the identity on the embeddings."""
    import torch

    with torch.no_grad():
        for layer in model.get_decoder().layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
