"""ViT blocks and the TiTok-style 1-D latent-token encoder / decoder (TiTok, Instella-T2I).

The encoder appends N learnable latent tokens to the image patches; after joint self-attention only the
latent tokens leave it. The decoder reads those N tokens plus one learned mask token per patch position
and paints the patches. Both can 2x2-merge (encoder) / 2x2-split (decoder) the patch tokens part-way
through, as the Instella-T2I 1D-BIT tokenizer does to cut the cost at high resolution. The 1-D families
(binary1d, flex) share these modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def make_norm(kind: str, width: int) -> nn.Module:
    """"layer" (ViT/TiTok) or "rms" (the LLaMA-style blocks of Instella-T2I)."""
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "rms":
        return nn.RMSNorm(width)
    raise ValueError(f"norm must be 'layer' or 'rms', got '{kind}'")


def rope_angles(positions: torch.Tensor, axes_dims: list[int], theta: float) -> torch.Tensor:
    """Rotary angles for multi-axis positions: (L, A) positions -> (L, sum(axes_dims) / 2) angles.

    Axis a rotates `axes_dims[a] / 2` channel pairs at frequencies theta^(-2i / axes_dims[a]).
    """
    angles = []
    for axis, dim in enumerate(axes_dims):
        freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)
        angles.append(positions[:, axis, None].float() * freqs)  # (L, dim / 2)
    return torch.cat(angles, dim=-1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i + 1) of x (B, h, L, d) by angles (L, d / 2)."""
    pairs = rearrange(x, "... (i two) -> ... i two", two=2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    rotated = torch.stack([pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 0] * sin + pairs[..., 1] * cos], -1)
    return rearrange(rotated, "... i two -> ... (i two)")


def token_positions(num_tokens: int, grid: int, device: torch.device) -> torch.Tensor:
    """3-axis positions (Instella-T2I): patch (y, x) -> (0, y, x), then latent token j -> (j, 0, 0). (P + N, 3)."""
    ys, xs = torch.meshgrid(torch.arange(grid, device=device), torch.arange(grid, device=device), indexing="ij")
    patches = torch.stack([torch.zeros_like(ys), ys, xs], dim=-1).flatten(0, 1)
    latents = F.pad(torch.arange(num_tokens, device=device)[:, None], (0, 2))
    return torch.cat([patches, latents])


class Attention(nn.Module):
    """Multi-head self-attention; `key_mask` (B, L) bool, True = attend to that token, or a mask already
    shaped for attention (1, 1, L, L), one row per query; optional rotary angles."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                rope: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        attn_mask = key_mask
        if key_mask is not None and key_mask.dim() == 2:
            attn_mask = key_mask[:, None, None, :]  # (B, 1, 1, L) broadcast over heads and queries
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, L, d)
        return self.out(rearrange(y, "b h l d -> b l (h d)"))


class MLP(nn.Module):
    """"gelu": Linear-GELU-Linear (ViT); "swiglu": gated SiLU (LLaMA), hidden scaled by 2/3 to keep params."""

    def __init__(self, width: int, ratio: float = 4.0, kind: str = "gelu"):
        super().__init__()
        if kind not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got '{kind}'")
        self.kind = kind
        hidden = int(width * ratio * (2 / 3 if kind == "swiglu" else 1))
        self.up = nn.Linear(width, hidden * (2 if kind == "swiglu" else 1))
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            gate, value = self.up(x).chunk(2, dim=-1)
            return self.down(F.silu(gate) * value)
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, norm: str = "layer", mlp: str = "gelu"):
        super().__init__()
        self.norm1, self.norm2 = make_norm(norm, width), make_norm(norm, width)
        self.attn = Attention(width, heads)
        self.mlp = MLP(width, mlp_ratio, mlp)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                rope: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask, rope)
        return x + self.mlp(self.norm2(x))


class PatchMerge(nn.Module):
    """2x2 neighbouring patch tokens -> one: (B, h*w, C) -> (B, h/2*w/2, C) by a linear 4C -> C."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, grid: int) -> torch.Tensor:
        x = rearrange(x, "b (h i w j) c -> b (h w) (i j c)", h=grid // 2, i=2, w=grid // 2, j=2)
        return self.proj(x)


class PatchSplit(nn.Module):
    """The decoder's inverse of `PatchMerge`: (B, h*w, C) -> (B, 2h*2w, C) by a linear C -> 4C."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, 4 * width)

    def forward(self, x: torch.Tensor, grid: int) -> torch.Tensor:
        return rearrange(self.proj(x), "b (h w) (i j c) -> b (h i w j) c", h=grid, w=grid, i=2, j=2)


def _blocks(depth: int, width: int, heads: int, mlp_ratio: float, norm: str, mlp: str) -> nn.ModuleList:
    return nn.ModuleList(Block(width, heads, mlp_ratio, norm, mlp) for _ in range(depth))


def _check_grid(resolution: int, patch_size: int, resample_after: int | None, depth: int) -> int:
    """Patch grid side; the 2x2 merge/split needs an even grid and a block index inside the stack."""
    if resolution % patch_size:
        raise ValueError(f"resolution {resolution} is not divisible by patch_size {patch_size}")
    grid = resolution // patch_size
    if resample_after is not None and (grid % 2 or not 0 < resample_after < depth):
        raise ValueError(f"2x2 patch resampling after block {resample_after} needs an even patch grid "
                         f"(got {grid}) and 0 < block < depth ({depth})")
    return grid


class _Positions(nn.Module):
    """Where tokens get their positions: learned additive embeddings (TiTok) or 3-axis RoPE (Instella-T2I).

    With `rope_axes` (channel pairs per axis, summing to the head size) attention is rotary over
    (latent index, y, x) and nothing is added to the tokens; otherwise each patch position and each latent
    token slot has a learned embedding, initialised at unit scale so that positions are told apart from the
    first step (at 0.02 a 1-D tokenizer sat on the mean image for ~1,500 steps at mini scale).
    """

    def __init__(self, width: int, heads: int, rope_axes: list[int] | None, rope_theta: float):
        super().__init__()
        if rope_axes is not None and (sum(rope_axes) != width // heads or any(d % 2 for d in rope_axes)):
            raise ValueError(f"rope_axes {list(rope_axes)} must be even and sum to the head size {width // heads}")
        self.width, self.rope_axes, self.rope_theta = width, rope_axes, rope_theta

    def learned(self, count: int) -> nn.Parameter | None:
        return None if self.rope_axes is not None else nn.Parameter(torch.randn(1, count, self.width))

    def rope(self, num_tokens: int, grid: int, device: torch.device) -> torch.Tensor | None:
        if self.rope_axes is None:
            return None
        return rope_angles(token_positions(num_tokens, grid, device), self.rope_axes, self.rope_theta)


def _add(x: torch.Tensor, embedding: nn.Parameter | None) -> torch.Tensor:
    return x if embedding is None else x + embedding


class LatentTokenEncoder(nn.Module):
    """Image -> N latent tokens (TiTok): [patches ; latent tokens] -> ViT -> the latent tokens only.

    Args:
        resolution: image side H = W.
        patch_size: pixels per patch side.
        num_tokens: N learnable latent tokens.
        width, depth, heads: the ViT.
        out_dim: size of each output token (the quantizer's input D).
        merge_after: 2x2-merge the patch tokens after this many blocks (Instella: 8); None = never.
        mlp_ratio, norm, mlp: block options (see `Block`).
        rope_axes, rope_theta: rotary positions instead of learned ones (see `_Positions`).
        causal_latents: FlexTok's register mask (ml-flextok's "causal_last" sequence packing): patches
            attend to patches only, latent token j to every patch and to latent tokens 1..j, so a token
            cannot depend on the tokens after it. False = full attention (TiTok).
    """

    def __init__(self, resolution: int, patch_size: int, num_tokens: int, width: int, depth: int, heads: int,
                 out_dim: int, merge_after: int | None = None, mlp_ratio: float = 4.0, norm: str = "layer",
                 mlp: str = "gelu", rope_axes: list[int] | None = None, rope_theta: float = 10000.0,
                 causal_latents: bool = False):
        super().__init__()
        self.causal_latents = causal_latents
        self.grid = _check_grid(resolution, patch_size, merge_after, depth)
        self.num_tokens, self.merge_after = num_tokens, merge_after
        self.positions = _Positions(width, heads, rope_axes, rope_theta)
        self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.patch_pos = self.positions.learned(self.grid**2)
        self.latent_tokens = nn.Parameter(torch.randn(1, num_tokens, width))  # one learned vector per slot
        self.blocks = _blocks(depth, width, heads, mlp_ratio, norm, mlp)
        self.merge = PatchMerge(width) if merge_after is not None else None
        self.norm = make_norm(norm, width)
        self.proj = nn.Linear(width, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, out_dim)."""
        n, grid = self.num_tokens, self.grid
        patches = _add(rearrange(self.patch_embed(images), "b c h w -> b (h w) c"), self.patch_pos)  # (B, P, C)
        x = torch.cat([patches, self.latent_tokens.expand(images.shape[0], -1, -1)], dim=1)  # (B, P + N, C)
        rope = self.positions.rope(n, grid, images.device)
        for i, block in enumerate(self.blocks):
            if i == self.merge_after:
                x = torch.cat([self.merge(x[:, :-n], grid), x[:, -n:]], dim=1)
                grid //= 2
                rope = self.positions.rope(n, grid, images.device)
            x = block(x, self._attention_mask(x.shape[1], images.device), rope)
        return self.proj(self.norm(x[:, -n:]))


    def _attention_mask(self, length: int, device: torch.device) -> torch.Tensor | None:
        """(1, 1, L, L) bool, True = may attend, for `causal_latents`; None = full attention."""
        if not self.causal_latents:
            return None
        patches = length - self.num_tokens
        allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()  # causal over everything
        allowed[:, :patches] = True  # every token reads every patch (the prefix)
        return allowed[None, None]


class LatentTokenDecoder(nn.Module):
    """N latent tokens -> image (TiTok): [mask token per patch ; tokens] -> ViT -> pixels of each patch.

    Args:
        resolution, patch_size: the output image and its patches.
        num_tokens: N, the tokens it reads.
        in_dim: size of each input token (the quantizer's output D); normalised, then projected to `width`.
        width, depth, heads: the ViT.
        split_after: 2x2-split the patch tokens after this many blocks (Instella: 8); the mask tokens then
            start on the half-resolution grid. None = never.
        mlp_ratio, norm, mlp: block options (see `Block`).
        rope_axes, rope_theta: rotary positions instead of learned ones (see `_Positions`).
    """

    def __init__(self, resolution: int, patch_size: int, num_tokens: int, in_dim: int, width: int, depth: int,
                 heads: int, split_after: int | None = None, mlp_ratio: float = 4.0, norm: str = "layer",
                 mlp: str = "gelu", rope_axes: list[int] | None = None, rope_theta: float = 10000.0):
        super().__init__()
        self.grid = _check_grid(resolution, patch_size, split_after, depth)
        self.patch_size, self.num_tokens, self.split_after = patch_size, num_tokens, split_after
        self.start_grid = self.grid // 2 if split_after is not None else self.grid
        self.positions = _Positions(width, heads, rope_axes, rope_theta)
        # Token embeddings may be tiny (bits x a 0.02-scale matrix): normalise before projecting.
        self.token_in = nn.Sequential(make_norm(norm, in_dim), nn.Linear(in_dim, width))
        self.token_pos = self.positions.learned(num_tokens)
        self.mask_token = nn.Parameter(torch.randn(1, 1, width))
        self.patch_pos = self.positions.learned(self.start_grid**2)
        self.blocks = _blocks(depth, width, heads, mlp_ratio, norm, mlp)
        self.split = PatchSplit(width) if split_after is not None else None
        self.fine_pos = self.positions.learned(self.grid**2) if split_after is not None else None
        self.norm = make_norm(norm, width)
        self.to_pixels = nn.Linear(width, 3 * patch_size**2)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                patch_extra: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, in_dim), mask (B, N) bool (True = real token, others are ignored) -> (B, 3, H, W).

        patch_extra: (B, P0, width) added to the patch tokens (a flow decoder's noisy image and timestep).
        """
        b, n = tokens.shape[:2]
        if n != self.num_tokens:
            raise ValueError(f"the decoder reads {self.num_tokens} tokens, got {n}")
        grid = self.start_grid
        latent = _add(self.token_in(tokens), self.token_pos)  # (B, N, C)
        patches = _add(self.mask_token.expand(b, grid**2, -1), self.patch_pos)  # (B, P0, C)
        if patch_extra is not None:
            patches = patches + patch_extra
        x = torch.cat([patches, latent], dim=1)
        rope = self.positions.rope(n, grid, tokens.device)
        for i, block in enumerate(self.blocks):
            if i == self.split_after:
                x = torch.cat([_add(self.split(x[:, :-n], grid), self.fine_pos), x[:, -n:]], dim=1)
                grid *= 2
                rope = self.positions.rope(n, grid, tokens.device)
            x = block(x, _key_mask(mask, x.shape[1]), rope)
        pixels = self.to_pixels(self.norm(x[:, :-n]))  # (B, P, 3 * p * p)
        return rearrange(pixels, "b (h w) (c i j) -> b c (h i) (w j)", h=self.grid, i=self.patch_size,
                         j=self.patch_size)


def _key_mask(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Token mask (B, N) -> key mask (B, length): patch positions (first) are always attended to."""
    return None if mask is None else F.pad(mask.bool(), (length - mask.shape[1], 0), value=True)
