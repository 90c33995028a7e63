"""Shifted-window attention of SLAB-Swin: softmax window attention with relative
position bias, and simplified linear attention (SLA) inside windows.

:class:`ShiftedWindowAttention` pads the feature map to window multiples, applies the
cyclic shift, partitions windows, and tells the inner attention which tokens may see
each other. Padded tokens and tokens wrapped around by the shift never contribute to
a real token's output -- in the softmax attention (an additive mask, as Swin's region
mask, extended to padding) and in SLA alike (keys/values restricted to the query's
region, padding excluded, and the depth-wise conv on V applied per region).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from .attention import (SLA_EPS, ValueDWConv, at_least_fp32, grouped_normalised_linear_attention, merge_heads,
                        normalised_linear_attention, split_heads)
from .transformer import pad_to_multiple

MASKED = -1e4  # additive logit for forbidden pairs: exp() underflows to 0, yet finite in fp16


def window_partition(x, ws):
    """(B, H, W, C) with H, W multiples of ws -> (B * nW, ws * ws, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows, ws, h, w):
    """(B * nW, ws * ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def window_regions(hw_shape, padded_hw, ws, shift, device):
    """Per-window token regions for a padded, cyclically shifted map.

    Returns ``(region, valid, num_regions)``; ``region`` and ``valid`` are (nW, ws*ws):
    ``region`` (< num_regions) tells apart the parts of a window that come from
    different places of the map (Swin's region mask: wrapped rows/columns form their
    own regions), ``valid`` is False for padding.
    """
    (h, w), (hp, wp) = hw_shape, padded_hw
    rows = torch.arange(hp, device=device)
    cols = torch.arange(wp, device=device)
    # Position in the original (unshifted, padded) map of each shifted position.
    src_rows, src_cols = (rows + shift) % hp, (cols + shift) % wp
    valid = (src_rows < h)[:, None] & (src_cols < w)[None, :]
    if shift > 0:
        region = (rows >= hp - shift).long()[:, None] * 2 + (cols >= wp - shift).long()[None, :]
    else:
        region = torch.zeros(hp, wp, dtype=torch.long, device=device)
    as_windows = [window_partition(t[None, :, :, None], ws)[..., 0] for t in (region, valid)]
    return as_windows[0], as_windows[1], 4 if shift > 0 else 1


class WindowAttentionBase(BaseModule):
    """The projections of a window attention: one qkv linear and an output projection."""

    def __init__(self, embed_dims, num_heads, window_size, qkv_bias=True, proj_drop=0., init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} is not divisible by num_heads {num_heads}')
        self.embed_dims, self.num_heads, self.window_size = embed_dims, num_heads, window_size
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def input_layers(self):
        return [self.qkv]


class WindowSoftmaxAttention(WindowAttentionBase):
    """Swin's window attention: softmax with a learned relative position bias (``'S'``)."""

    def __init__(self, embed_dims, num_heads, window_size, qkv_bias=True, attn_drop=0., proj_drop=0.,
                 init_cfg=None):
        super().__init__(embed_dims, num_heads, window_size, qkv_bias, proj_drop, init_cfg)
        self.attn_drop = attn_drop
        ws = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing='ij')).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        # Derived from the window size, so not saved in checkpoints.
        self.register_buffer('relative_position_index', rel[..., 0] * (2 * ws - 1) + rel[..., 1],
                             persistent=False)

    def forward(self, x, region=None, valid=None, num_regions=1):
        """x: (B*nW, N, C); region/valid: (nW, N) or None (all tokens see each other)."""
        bw, n, c = x.shape
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        mask = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)          # (1, h, N, N)
        if region is not None:
            allowed = (region[:, :, None] == region[:, None, :]) & valid[:, None, :]
            pair_mask = torch.zeros(allowed.shape, dtype=mask.dtype, device=x.device).masked_fill(~allowed, MASKED)
            nw = region.shape[0]
            mask = (mask + pair_mask.unsqueeze(1)).unsqueeze(0).expand(bw // nw, -1, -1, -1, -1)
            mask = mask.reshape(bw, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype),
                                             dropout_p=self.attn_drop if self.training else 0.)
        return self.proj_drop(self.proj(merge_heads(out)))


class WindowLinearAttention(WindowAttentionBase):
    """SLA inside windows (``'L'``): ReLU linear attention, a learned positional
    encoding on the keys (one vector per in-window position, added after the qkv
    projection and before the ReLU, as in the reference model), and a depth-wise conv
    on V over the window grid.

    Args:
        kernel_size (int): Kernel of the depth-wise conv on V. Default: 5.
    """

    def __init__(self, embed_dims, num_heads, window_size, qkv_bias=True, proj_drop=0., kernel_size=5,
                 init_cfg=None):
        super().__init__(embed_dims, num_heads, window_size, qkv_bias, proj_drop, init_cfg)
        self.positional_encoding = nn.Parameter(torch.zeros(1, window_size * window_size, embed_dims))
        self.value_conv = ValueDWConv(embed_dims // num_heads, kernel_size)

    def forward(self, x, region=None, valid=None, num_regions=1):
        """x: (B*nW, N, C); region/valid: (nW, N) with region ids < num_regions, or None
        (all tokens see each other)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = F.relu(q), F.relu(k + self.positional_encoding)
        q, k, v = (split_heads(t, self.num_heads) for t in (q, k, v))    # (B*nW, h, N, d)
        ws = (self.window_size, self.window_size)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v32 = at_least_fp32(q, k, v)
            if region is None:
                out = normalised_linear_attention(q, k, v32)
            else:
                # One-hot region membership; padding belongs to no region.
                groups = (F.one_hot(region, num_regions) * valid[..., None]).to(q.dtype)  # (nW, N, R)
                nw = groups.shape[0]
                shape = (-1, nw) + q.shape[1:]
                out = grouped_normalised_linear_attention(q.view(shape), k.view(shape), v32.view(shape), groups,
                                                    SLA_EPS).flatten(0, 1)
        out = out.to(v.dtype)
        if region is None:
            out = out + self.value_conv(v, ws)
        else:
            # The conv sees each region on its own (zeros elsewhere), so nothing leaks
            # across a region border or out of the padding.
            nw = groups.shape[0]
            v_windows = v.view((-1, nw) + v.shape[1:])
            for r in range(groups.shape[-1]):
                member = groups[:, None, :, r, None].to(v.dtype)              # (nW, 1, N, 1)
                conv = self.value_conv((v_windows * member).flatten(0, 1), ws)
                out = out + (conv.view_as(v_windows) * member).flatten(0, 1)
        return self.proj_drop(self.proj(merge_heads(out)))


class ShiftedWindowAttention(BaseModule):
    """Pads to window multiples, cyclically shifts, partitions into windows, runs the
    inner window attention with the masks that keep padding and wrapped tokens out,
    and undoes all of it.

    Args:
        window_attn (WindowAttentionBase): The attention inside each window.
        shift_size (int): Cyclic shift (0 for regular windows). It is skipped when one
            window covers the whole feature map: then there is nothing to shift.
    """

    def __init__(self, window_attn, shift_size=0, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if not 0 <= shift_size < window_attn.window_size:
            raise ValueError(f'shift_size must be in [0, window_size={window_attn.window_size}), got {shift_size}')
        self.window_attn = window_attn
        self.shift_size = shift_size

    @property
    def window_size(self):
        return self.window_attn.window_size

    def input_layers(self):
        return self.window_attn.input_layers()

    def forward(self, x, hw_shape):
        b, n, c = x.shape
        h, w = hw_shape
        ws = self.window_size
        x, (pad_h, pad_w) = pad_to_multiple(x.view(b, h, w, c), ws)
        hp, wp = x.shape[1], x.shape[2]
        shift = self.shift_size if (hp > ws or wp > ws) else 0
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        # Traced for ONNX, always the masked path: it is exact for any size, while the
        # unmasked one would be baked in for every size if the example needed no mask.
        if shift or pad_h or pad_w or torch.jit.is_tracing():
            region, valid, num_regions = window_regions((h, w), (hp, wp), ws, shift, x.device)
        else:
            region, valid, num_regions = None, None, 1
        out = window_reverse(self.window_attn(window_partition(x, ws), region, valid, num_regions), ws, hp, wp)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        return out[:, :h, :w, :].reshape(b, n, c)
