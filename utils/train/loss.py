"""Next-token cross-entropy fused with the output projection: the training loss of stage 02.

`LlamaForCausalLM(labels=...)` materialises the logits in the compute dtype, copies them to fp32, keeps the fp32
log-softmax for backward, then allocates fp32 and bf16 gradients of the same size: with a 32K vocabulary and 4,096
tokens per micro-batch that is ~2.3 GB of new tensors per step. On CPU every one of them is fresh memory from the
kernel (glibc hands out blocks over 32 MiB with mmap and returns them on free), and page-faulting it in costs ~30 %
of a tiny model's step; on a GPU it is the peak-memory spike at the end of the forward pass.

Here the loss and both gradients are computed in the forward pass (the approach of Liger-Kernel's fused linear
cross-entropy): one matmul writes the logits into a workspace in the compute dtype, the fp32 softmax runs over
row chunks of it and writes the gradient back in place, and two matmuls give the gradients of the hidden states and
the weight. Backward only scales them. The workspace lives as long as the module, so a step allocates no large
tensor at all. Numerics follow autocast's: matmuls in the compute dtype, softmax and loss in fp32.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100  # targets with this value add nothing to the loss or the gradients (HF convention)
CHUNK_BYTES = 64 * 2**20  # fp32 rows of the softmax processed at a time


class Workspace:
    """Reusable buffers keyed by (name, shape, dtype, device), so repeated steps reuse the same memory."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, shape, dtype, device)
        if key not in self._buffers:
            self._buffers = {k: v for k, v in self._buffers.items() if k[0] != name}  # a new shape replaces the old
            self._buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return self._buffers[key]


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device_type = hidden.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype


def _chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


def _loss_and_logit_grads(logits: torch.Tensor, targets: torch.Tensor, workspace: Workspace,
                          grad_scale: float | None) -> torch.Tensor:
    """Summed cross-entropy of `logits` (rows, vocab). With a grad_scale, overwrites `logits` with
    grad_scale * d(sum loss)/d(logits), scaled in fp32 before rounding to the compute dtype as autocast's
    backward would round it."""
    rows, vocab = logits.shape
    step = min(rows, _chunk_rows(vocab))
    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    for start in range(0, rows, step):
        chunk = logits[start:start + step]
        target = targets[start:start + step]
        scratch = workspace.get("softmax", (step, vocab), torch.float32, logits.device)[:len(chunk)]
        scratch.copy_(chunk)
        valid = target != IGNORE_INDEX
        picked = target.clamp(min=0).unsqueeze(1)
        lse = torch.logsumexp(scratch, dim=1)
        total += ((lse - scratch.gather(1, picked).squeeze(1)) * valid).sum()
        if grad_scale is not None:
            probs = scratch.sub_(lse.unsqueeze(1)).exp_()
            probs.scatter_(1, picked, probs.gather(1, picked) - 1.0)  # softmax - one-hot; indices unique per row
            probs.mul_(valid.unsqueeze(1) * grad_scale)
            chunk.copy_(probs)
    return total


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, normalizer: float,
                dtype: torch.dtype, workspace: Workspace) -> torch.Tensor:
        h, w = hidden.to(dtype), weight.to(dtype)
        logits = workspace.get("logits", (h.shape[0], w.shape[0]), dtype, h.device)
        torch.mm(h, w.t(), out=logits)
        total = _loss_and_logit_grads(logits, targets, workspace, grad_scale=1.0 / normalizer)
        ctx.save_for_backward(torch.mm(logits, w), torch.mm(logits.t(), h))
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total / normalizer

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[Any, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors  # already divided by the normalizer
        hidden_dtype, weight_dtype = ctx.dtypes
        return (grad_hidden.to(hidden_dtype) * grad_loss.to(hidden_dtype),
                grad_weight.to(weight_dtype) * grad_loss.to(weight_dtype), None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, normalizer: float,
                         workspace: Workspace) -> torch.Tensor:
    """sum over tokens of cross-entropy(hidden @ weight.T, targets) / normalizer, for hidden (tokens, dim)."""
    dtype = _compute_dtype(hidden)
    if dtype == torch.float16:
        # fp16 gradients of ~1/vocab/tokens underflow unless the grad scaler's factor is applied before rounding,
        # and that factor only reaches backward: fp16 (GPUs without bf16) takes the unfused path.
        return unfused_linear_cross_entropy(hidden, weight, targets, normalizer)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        with torch.autocast(hidden.device.type, enabled=False):
            return _FusedLinearCrossEntropy.apply(hidden, weight, targets, normalizer, dtype, workspace)
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        logits = workspace.get("logits", (hidden.shape[0], weight.shape[0]), dtype, hidden.device)
        torch.mm(hidden.to(dtype), weight.to(dtype).t(), out=logits)
        return _loss_and_logit_grads(logits, targets, workspace, grad_scale=None) / normalizer


def unfused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 normalizer: float) -> torch.Tensor:
    """The textbook loss over materialised logits, as LlamaForCausalLM computes it."""
    logits = torch.nn.functional.linear(hidden, weight)
    return torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX,
                                             reduction="sum") / normalizer


class CausalLMLoss(torch.nn.Module):
    """A causal LM and its fused next-token loss as one module: what the training loop prepares and calls.

    Calling it goes through the wrapper's forward, so DDP and Accelerate's autocast see a normal forward pass;
    `.lm` is the untouched Hugging Face model that is saved, evaluated and exported. fused=False keeps the
    textbook loss, for torch.compile: Inductor fuses it into the graph itself, which beats the eager fused loss.
    """

    def __init__(self, lm: Any, fused: bool = True) -> None:
        super().__init__()
        self.lm = lm
        self.fused = fused
        self.workspace = Workspace()

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, normalizer: float | None = None) -> torch.Tensor:
        """Loss summed over the non-ignored targets, divided by `normalizer` (default: their count)."""
        hidden = self.lm.get_decoder()(input_ids=input_ids).last_hidden_state
        head = self.lm.get_output_embeddings()
        flat_targets = targets.reshape(-1)
        if normalizer is None:
            normalizer = max(1, int((flat_targets != IGNORE_INDEX).sum()))
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        if not self.fused:
            return unfused_linear_cross_entropy(flat_hidden, head.weight, flat_targets, normalizer)
        return _fused_loss(flat_hidden, head.weight, flat_targets, normalizer, self.workspace)


@torch.compiler.disable  # python-level chunk loop and in-place workspace: run eagerly inside a compiled model
def _fused_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, normalizer: float,
                workspace: Workspace) -> torch.Tensor:
    return linear_cross_entropy(hidden, weight, targets, normalizer, workspace)
