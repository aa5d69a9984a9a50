"""A Mamba (S6 selective state-space) block that runs anywhere, for the U-Mamba baseline.

Why not just ``mamba_ssm.Mamba``: that package needs CUDA and a compiler at install time, and the
comparison model must also build, train a few steps and be tested on a CPU. So the block here is
pure PyTorch, with parameters named and shaped exactly as in ``mamba_ssm.Mamba`` (``in_proj``,
``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``; same initialisation), and
only the scan itself is switched: on a CUDA tensor, when ``mamba_ssm`` imports, its fused kernel
``selective_scan_fn`` is called on these very parameters; otherwise :func:`selective_scan` below.
One set of weights therefore trains on a GPU with the kernel and evaluates on a CPU without it,
and a checkpoint never records which implementation produced it.

The S6 recurrence per channel d and state n (A diagonal, negative):

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,    y_t = C_t . h_t + D * u_t

with input-dependent ``delta`` (softplus of a low-rank projection), ``B`` and ``C``; the block
wraps it as in Mamba: in-projection to (x, z), depthwise causal conv1d + SiLU on x, the scan,
gating ``y * silu(z)`` and an out-projection.

:func:`selective_scan` works in chunks of ``chunk`` tokens: inside a chunk all pairwise decays
``exp(S_t - S_s)`` (S the cumulative sum of ``delta * A``, so every exponent is <= 0 and nothing
overflows) are formed at once and contracted with einsum; the state is carried between chunks.
That is ``L / chunk`` Python steps instead of ``L``, and with autograd each chunk is
checkpointed (recomputed in the backward pass) so the (chunk x chunk x d x n) decay tensors are
never all alive at once. :func:`selective_scan_reference` is the plain token-by-token loop, kept
as the test oracle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

#: Tokens per chunk of the pure-PyTorch scan (memory per chunk: B * chunk^2 * d_inner * d_state).
DEFAULT_SCAN_CHUNK = 16


def _cuda_selective_scan():
    """``mamba_ssm``'s fused selective-scan function, or None when it does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 - ImportError, or a broken CUDA extension (OSError, RuntimeError)
        return None
    return selective_scan_fn


# ---------------------------------------------------------------------------------------- scans
def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """Token-by-token S6 scan (the test oracle). Shapes: u, delta (b, L, d); A (d, n); B, C (b, L, n); D (d)."""
    b, length, d = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * u[:, t])
    return torch.stack(ys, dim=1)


def _scan_chunk(h0: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk of the scan from state ``h0`` (b, d, n): outputs (b, T, d) without the D term, last state."""
    length = u.shape[1]
    S = (delta.unsqueeze(-1) * A).cumsum(dim=1)                       # (b, T, d, n), decreasing
    causal = torch.ones(length, length, dtype=torch.bool, device=u.device).tril()  # [t, s]: s <= t
    diff = S.unsqueeze(2) - S.unsqueeze(1)                            # (b, t, s, d, n) = S_t - S_s
    decay = diff.masked_fill(~causal[None, :, :, None, None], float("-inf")).exp()
    dBu = (delta * u).unsqueeze(-1) * B.unsqueeze(2)                  # (b, s, d, n)
    h = torch.einsum("btsdn,bsdn->btdn", decay, dBu) + S.exp() * h0.unsqueeze(1)
    y = torch.einsum("btdn,btn->btd", h, C)
    return y, h[:, -1]


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                   chunk: int = DEFAULT_SCAN_CHUNK, use_checkpoint: bool | None = None) -> Tensor:
    """Chunked S6 scan, same contract as :func:`selective_scan_reference` (at least float32 inside).

    ``use_checkpoint`` (default: when autograd records) recomputes each chunk in the backward pass.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    dtype = u.dtype
    work = torch.promote_types(dtype, torch.float32)  # half precision would ruin the cumulative sums
    u, delta, A, B, C, D = (t.to(work) for t in (u, delta, A, B, C, D))
    if use_checkpoint is None:
        use_checkpoint = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    ys = []
    for start in range(0, u.shape[1], chunk):
        sl = slice(start, start + chunk)
        args = (h, u[:, sl], delta[:, sl], A, B[:, sl], C[:, sl])
        if use_checkpoint:
            y, h = checkpoint(_scan_chunk, *args, use_reentrant=False)
        else:
            y, h = _scan_chunk(*args)
        ys.append(y)
    return (torch.cat(ys, dim=1) + u * D).to(dtype)


# ---------------------------------------------------------------------------------------- block
class MambaMixer(nn.Module):
    """The Mamba block of Gu & Dao (2023) on (b, L, d_model) tokens; parameters as ``mamba_ssm.Mamba``.

    ``use_cuda_kernel`` (default True) lets a CUDA input go through ``mamba_ssm``'s kernel when it
    imports; set it False to force the pure scan everywhere.
    """

    use_cuda_kernel: bool = True

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 scan_chunk: int = DEFAULT_SCAN_CHUNK, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.scan_chunk = scan_chunk
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=True)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        # Initialisation of mamba_ssm: delta starts log-uniform in [dt_min, dt_max] (softplus^-1
        # stored as the bias), A = -[1, 2, ..., d_state] per channel (S4D-real), D = 1.
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(self.d_inner))

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[1]
        xs, z = self.in_proj(x).chunk(2, dim=-1)                         # (b, L, d_inner) each
        xs = F.silu(self.conv1d(xs.transpose(1, 2))[..., :length])       # causal: drop the right pad
        dt, B, C = self.x_proj(xs.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        A = -torch.exp(self.A_log.float())
        kernel = _cuda_selective_scan() if (self.use_cuda_kernel and xs.is_cuda) else None
        if kernel is not None:
            delta = (self.dt_proj.weight @ dt.transpose(1, 2))           # (b, d_inner, L); bias in the kernel
            y = kernel(xs, delta, A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
                       self.D.float(), z=z.transpose(1, 2).contiguous(), delta_bias=self.dt_proj.bias.float(),
                       delta_softplus=True).transpose(1, 2)
        else:
            delta = F.softplus(self.dt_proj(dt).float())
            with torch.autocast(device_type=x.device.type, enabled=False):
                y = selective_scan(xs.transpose(1, 2), delta, A, B, C, self.D, chunk=self.scan_chunk)
            y = y.to(z.dtype) * F.silu(z)
        return self.out_proj(y)


class MambaLayer(nn.Module):
    """U-Mamba's bottleneck layer on a (B, C, Z, Y, X) feature map: tokens in raster order.

    ``x + Mamba(LayerNorm(x))`` over the Z*Y*X tokens of C features each. The residual (the
    pre-norm block of Mamba's own language models) is an addition to U-Mamba-Bot's layer, which
    replaces the features by the Mamba output: with it the layer starts close to the identity, so
    the convolutional U-Net around it trains as usual from the first step.
    """

    def __init__(self, channels: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 scan_chunk: int = DEFAULT_SCAN_CHUNK) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.mamba = MambaMixer(channels, d_state, d_conv, expand, scan_chunk)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        tokens = x.reshape(b, c, -1).transpose(1, 2)                     # (B, L, C)
        out = tokens + self.mamba(self.norm(tokens))
        return out.transpose(1, 2).reshape(x.shape)
