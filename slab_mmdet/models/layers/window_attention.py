"""Shifted-window attention of SLAB-Swin: softmax window attention with relative
position bias, and simplified linear attention (SLA) inside windows.

:class:`ShiftedWindowAttention` decides the shift (none when one window covers the map)
and hands the (B, H, W, C) map to the inner attention, which lays out its windows.
Padded tokens and tokens wrapped around by the shift never contribute to a real
token's output. In PyTorch neither attention needs a mask or padding for it: within
bands of rows and columns (:func:`shifted_window_bands`) Swin's shifted windows, cut at
the map's edge, are regular windows that each hold one region, so both attend band by
band on the real tokens. A window cut at the edge is Swin's padded window without its
padding, the same computation: Swin's mask gives padding zero softmax weight, zero K
and V would add nothing to SLA's sums, and the conv on V pads with zeros. Traced for
ONNX, where the bands would depend on the input size, both pad instead: softmax as Swin
does (pad, cyclic shift, an additive mask between regions and on padding), SLA with K
and V zeroed on the padding.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from ...utils import exporting_graph
from .attention import at_least_fp32, merge_heads, normalised_linear_attention, split_heads, ValueDWConv
from .fast_paths import fast_path
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
    """Per-window token regions for a padded, cyclically shifted map (softmax attention's mask).

    Returns ``(region, valid)``, both (nW, ws*ws): ``region`` tells apart the parts of a
    window that come from different places of the map (Swin's region mask: wrapped
    rows/columns form their own regions), ``valid`` is False for padding.
    """
    (h, w), (hp, wp) = hw_shape, padded_hw
    rows = torch.arange(hp, device=device)
    cols = torch.arange(wp, device=device)
    # Position in the original (unshifted, padded) map of each shifted position.
    # (i + shift) mod size without a modulo by a size (0 <= shift < size): the dynamo ONNX
    # exporter cannot translate a remainder by a symbolic scalar.
    src_rows, src_cols = ((t + shift) - size * (t + shift >= size).long() for t, size in ((rows, hp), (cols, wp)))
    valid = (src_rows < h)[:, None] & (src_cols < w)[None, :]
    if shift > 0:
        region = (rows >= hp - shift).long()[:, None] * 2 + (cols >= wp - shift).long()[None, :]
    else:
        region = torch.zeros(hp, wp, dtype=torch.long, device=device)
    region, valid = (window_partition(t[None, :, :, None], ws)[..., 0] for t in (region, valid))
    return region, valid


def to_windows(qkv, window, num_heads):
    """(B, R, S, 3C) tiled by (wh, ww) windows -> q, k, v (B*nW, heads, wh*ww, d), contiguous, in one copy."""
    b, r, s, c3 = qkv.shape
    (wh, ww), d = window, c3 // 3 // num_heads
    tiled = qkv.reshape(b, r // wh, wh, s // ww, ww, 3, num_heads, d)
    return tiled.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, -1, num_heads, wh * ww, d).unbind(0)


def from_windows(out, map_shape, window):
    """(B*nW, heads, wh*ww, d) -> a (B, R / wh, wh, S / ww, ww, heads, d) view: the
    output in the layout of the (B, R, S, C) map (the caller copies it where it goes)."""
    (b, r, s), (wh, ww) = map_shape, window
    heads, d = out.shape[1], out.shape[3]
    return out.view(b, r // wh, s // ww, heads, wh, ww, d).permute(0, 1, 4, 2, 5, 3, 6)


class WindowAttentionBase(BaseModule):
    """The projections of a window attention (one qkv linear and an output projection) and
    the shifted windows as bands of regular windows (:func:`shifted_window_bands`).

    Called as ``attn(x, shift)`` on a (B, H, W, C) map, returns the map it attends to,
    (B, H, W, C). In PyTorch it attends band by band on the real tokens (subclasses give
    ``_attend``, the attention inside one band's windows); traced for ONNX, where the
    bands would depend on the input size, subclasses pad and mask (``_forward_traced``).
    """

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

    def forward(self, x, shift=0, residual=None):
        """x: (B, H, W, C) -> (B, H, W, C); windows shifted by ``shift``; plus ``residual``
        (B, H, W, C) when given (on the fast path added tile by tile)."""
        if fast_path(x, self):
            return self._forward_in_tiles(x, shift, residual)
        if exporting_graph():
            out = self._forward_traced(x, shift)
        else:
            b, h, w, c = x.shape
            qkv = self.qkv(x.reshape(-1, c)).view(b, h, w, 3 * c)          # on the real tokens only
            out = self.proj_drop(self.proj(self._attend_in_bands(qkv, h, w, shift).reshape(-1, c)).view(b, h, w, c))
        return out if residual is None else residual + out

    def _forward_in_tiles(self, x, shift, residual=None):
        """Inference: projections and attention one tile of whole windows at a time
        (:func:`window_tiles`), so that a tile's qkv, its windows' copies and its output stay
        in cache; of the whole map only x (and ``residual``, added to the output when given)
        is read and the output written once."""
        b, h, w, c = x.shape
        out = x.new_empty(b, h, w, c)
        for r0, r1, wh, i0 in shifted_window_bands(h, self.window_size, shift):
            for c0, c1, wc, j0 in shifted_window_bands(w, self.window_size, shift):
                for rows, cols in window_tiles((r0, r1), (c0, c1), (wh, wc)):
                    qkv = self.qkv(x[:, rows, cols].contiguous())       # one addmm on rows
                    tile_shape = qkv.shape[:3]
                    windows = from_windows(self._attend(qkv, (wh, wc), (i0, j0)), tile_shape, (wh, wc))
                    projected = self.proj(windows.reshape(tile_shape + (c,)))
                    if residual is None:
                        out[:, rows, cols] = projected
                    else:
                        torch.add(residual[:, rows, cols], projected, out=out[:, rows, cols])
        return out

    def _attend_in_bands(self, qkv, h, w, shift):
        """The attention of the shifted windows, band by band, on the real tokens only (no padding)."""
        ws = self.window_size
        b, c = qkv.shape[0], qkv.shape[-1] // 3
        row_bands, col_bands = shifted_window_bands(h, ws, shift), shifted_window_bands(w, ws, shift)
        # Under autograd the bands' outputs are concatenated: an in-place write into one
        # output would copy the whole gradient in its backward, once per band. In inference
        # each band is written straight into the output, one strided copy.
        out = None if qkv.requires_grad else qkv.new_empty(b, h, w, c)
        rows = []
        # split, not slicing: the backward of a slice zero-fills the whole input's gradient.
        for (r0, r1, wh, i0), row in zip(row_bands, qkv.split([r1 - r0 for r0, r1, _, _ in row_bands], dim=1)):
            band = []
            for (c0, c1, wc, j0), part in zip(col_bands, row.split([c1 - c0 for c0, c1, _, _ in col_bands], dim=2)):
                windows = from_windows(self._attend(part, (wh, wc), (i0, j0)), (b, r1 - r0, c1 - c0), (wh, wc))
                if out is None:
                    band.append(windows.reshape(b, r1 - r0, c1 - c0, c))
                else:
                    out[:, r0:r1, c0:c1].view(windows.shape).copy_(windows)
            if out is None:
                rows.append(torch.cat(band, dim=2) if len(band) > 1 else band[0])
        if out is None:
            out = torch.cat(rows, dim=1) if len(rows) > 1 else rows[0]
        return out

    def _attend(self, qkv, window, first):
        """The attention in the (wh, ww) windows tiling ``qkv`` (B, R, S, 3C), whose positions
        start at ``first`` inside Swin's window -> (B*nW, heads, wh*ww, d)."""
        raise NotImplementedError

    def _forward_traced(self, x, shift):
        raise NotImplementedError


class WindowSoftmaxAttention(WindowAttentionBase):
    """Swin's window attention: softmax with a learned relative position bias (``'S'``).

    Band by band, each window's bias is that of its positions inside Swin's rolled window
    (a window cut at a region's edge sees the sub-block of the bias between its positions)."""

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

    def _attend(self, qkv, window, first):
        (wh, ww), ws = window, self.window_size
        q, k, v = to_windows(qkv, window, self.num_heads)
        # The bias between the band's in-window positions (Swin's rolled window, from ``first``).
        pos = ((torch.arange(wh, device=qkv.device) + first[0])[:, None] * ws
               + (torch.arange(ww, device=qkv.device) + first[1])[None, :]).flatten()
        index = self.relative_position_index[pos][:, pos].flatten()
        bias = self.relative_position_bias_table[index].view(wh * ww, wh * ww, -1).permute(2, 0, 1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0).to(q.dtype),
                                              dropout_p=self.attn_drop if self.training else 0.)

    def _forward_traced(self, x, shift):
        """For ONNX, the same as Swin computes it, in one grid whatever the size: pad, cyclic
        shift, and an additive mask between regions and on padding."""
        b, h, w, c = x.shape
        ws = self.window_size
        x, (pad_h, pad_w) = pad_to_multiple(x, ws)
        hp, wp = x.shape[1], x.shape[2]
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, ws)
        bw, n, _ = windows.shape
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(windows).chunk(3, dim=-1))
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1)                        # (heads, N, N)
        # Always masked: exact for any size, where the unmasked graph would be baked in for
        # every size if the example input needed no mask.
        region, valid = window_regions((h, w), (hp, wp), ws, shift, x.device)
        allowed = (region[:, :, None] == region[:, None, :]) & valid[:, None, :]
        pair_mask = torch.zeros(allowed.shape, dtype=bias.dtype, device=x.device).masked_fill(~allowed, MASKED)
        nw = region.shape[0]
        mask = (bias + pair_mask.unsqueeze(1)).unsqueeze(0).expand(bw // nw, -1, -1, -1, -1)
        mask = mask.reshape(bw, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype),
                                             dropout_p=self.attn_drop if self.training else 0.)
        out = window_reverse(merge_heads(out), ws, hp, wp)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        # The crop copied once, so that the projection is one addmm on rows (not a matmul on strided memory).
        return self.proj_drop(self.proj(out[:, :h, :w, :].contiguous()))


def shifted_window_bands(length, ws, shift):
    """The bands of one axis of the map (``length`` positions) in which Swin's windows,
    shifted by ``shift`` and cut at the map's edge, are regular:
    ``[(start, stop, window, first_position)]``, tiling ``[0, length)``.

    Shifted windows are cut at ``shift + k * ws`` (``k * ws`` unshifted): the first
    ``shift`` positions are the end of a window that the cyclic shift fills with wrapped
    positions, a region of their own; then whole windows; the last window stops at the
    map's edge (beyond it Swin has only padding, which no real token sees).
    ``first_position`` is where a band's windows start inside Swin's (rolled) window,
    which fixes their positional encoding.
    """
    bands, start = [], 0
    if shift:
        start = min(shift, length)
        bands.append((0, start, start, ws - shift))
    whole = start + (length - start) // ws * ws
    if whole > start:
        bands.append((start, whole, ws, 0))
    if length > whole:
        bands.append((whole, length, length - whole, 0))
    return bands


# Tokens per tile of :meth:`WindowAttentionBase._forward_in_tiles`: its qkv (3C channels) and
# the attention's copies of it fit a core's cache at Swin-T's widths; SLAB-Swin's 56 x 56
# windows make one window a tile.
WINDOW_TILE_TOKENS = 4096


def window_tiles(row_span, col_span, window):
    """Tiles of whole (wh, ww) windows covering the band ``row_span`` x ``col_span`` (each a
    multiple of its window side), of about :data:`WINDOW_TILE_TOKENS` tokens (at least one
    window): ``[(row_slice, col_slice)]`` in row-major order."""
    (r0, r1), (c0, c1), (wh, ww) = row_span, col_span, window
    per_tile = max(1, WINDOW_TILE_TOKENS // (wh * ww))
    band_cols = (c1 - c0) // ww
    if per_tile >= band_cols:         # whole rows of windows
        rows_step, cols_step = wh * max(1, per_tile // band_cols), c1 - c0
    else:
        rows_step, cols_step = wh, ww * per_tile
    return [(slice(r, min(r + rows_step, r1)), slice(col, min(col + cols_step, c1)))
            for r in range(r0, r1, rows_step) for col in range(c0, c1, cols_step)]


def real_tokens(padded_hw, hw_shape, offset, device):
    """(R, S) bool: which positions of a padded (R, S) layout hold the (H, W) map placed
    at (``offset``, ``offset``); False on padding."""
    (r, s), (h, w) = padded_hw, hw_shape
    rows, cols = torch.arange(r, device=device), torch.arange(s, device=device)
    return ((rows >= offset) & (rows < offset + h))[:, None] & ((cols >= offset) & (cols < offset + w))[None, :]


class WindowLinearAttention(WindowAttentionBase):
    """SLA inside windows (``'L'``): ReLU linear attention, a learned positional
    encoding on the keys (one vector per in-window position, added after the qkv
    projection and before the ReLU, as in the reference model), and a depth-wise conv
    on V over the window grid.

    Band by band (the base class), the sums and the conv on V see exactly the tokens of
    one region; the in-window positions (and so the positional encoding) are those of
    the cyclic shift.

    Args:
        kernel_size (int): Kernel of the depth-wise conv on V. Default: 5.
    """

    def __init__(self, embed_dims, num_heads, window_size, qkv_bias=True, proj_drop=0., kernel_size=5,
                 init_cfg=None):
        super().__init__(embed_dims, num_heads, window_size, qkv_bias, proj_drop, init_cfg)
        self.positional_encoding = nn.Parameter(torch.zeros(1, window_size * window_size, embed_dims))
        self.value_conv = ValueDWConv(embed_dims // num_heads, kernel_size)

    def _forward_traced(self, x, shift):
        """For ONNX, in one window grid whatever the size (the number of bands depends on it):
        the map padded by ``ws - shift`` at the top/left, whose regular windows are the shifted
        windows, and to window multiples; V zeroed on the padding, and the keys there left out
        of their sum by a mask column (multiplying K by the mask would be one more pass)."""
        b, h, w, c = x.shape
        ws = self.window_size
        offset = ws - shift if shift else 0
        if offset:
            # On the input's C channels rather than on qkv's 3C (a third of the copy): the
            # projection of these zero rows is the bias, masked as padding is.
            x = F.pad(x, (0, 0, offset, 0, offset, 0))
        # The projections on the 4-D map, not on (B*H*W, C) rows: ONNX Runtime turns a 2-D
        # MatMul + Add into a Gemm that runs ~1.6x slower on this CPU (docs/benchmarks.md).
        qkv, _ = pad_to_multiple(self.qkv(x), ws)
        r, s = qkv.shape[1], qkv.shape[2]
        real = real_tokens((r, s), (h, w), offset, qkv.device)
        out = from_windows(self._attend(qkv, (ws, ws), (0, 0), real), (b, r, s), (ws, ws)).reshape(b, r, s, c)
        return self.proj_drop(self.proj(out[:, offset:offset + h, offset:offset + w, :]))

    def _attend(self, qkv, window, first, real=None):
        """SLA in the (wh, ww) windows tiling ``qkv`` (B, R, S, 3C), whose positions start at
        ``first`` inside Swin's window; ``real`` (R, S) is False on padding (traced only).
        Returns (B*nW, heads, wh*ww, d)."""
        b, r, s, _ = qkv.shape
        (wh, ww), heads, ws = window, self.num_heads, self.window_size
        # Head-major and contiguous: the matmuls below read q, k and v without copies.
        q, k, v = to_windows(qkv, window, heads)
        d = q.shape[-1]
        pos = self.positional_encoding.view(ws, ws, heads, d)[first[0]:first[0] + wh, first[1]:first[1] + ww]
        pos = pos.reshape(wh * ww, heads, d).transpose(0, 1)
        # In place where autograd and tracing allow it (q, k, v are views of a multi-output unbind).
        in_place = not (qkv.requires_grad or exporting_graph())
        q = F.relu(q, inplace=in_place)
        k = F.relu(k.add_(pos) if in_place else k + pos, inplace=True)
        key_mask = None
        if real is not None:   # (B*nW, 1, N, 1): 0 on padding
            key_mask = real.reshape(r // wh, wh, s // ww, ww).transpose(1, 2).reshape(1, -1, 1, wh * ww, 1)
            key_mask = key_mask.to(k.dtype).expand(b, -1, -1, -1, -1).flatten(0, 1)
            v = v * key_mask
        # Token-major for the conv (one copy of V), which torch.export must be told of by
        # contiguous() (a reshape would not prove it).
        out = self.value_conv(v.transpose(1, 2).contiguous().flatten(2), (wh, ww), heads)  # (B*nW, N, C)
        out = out.view(out.shape[0], wh * ww, heads, d).transpose(1, 2)       # (B*nW, heads, N, d)
        with torch.autocast(device_type=qkv.device.type, enabled=False):
            return normalised_linear_attention(*at_least_fp32(q, k, v), residual=out, key_mask=key_mask)


class ShiftedWindowAttention(BaseModule):
    """Window attention on a token sequence laid out on a grid, regular or shifted
    (Swin's alternating blocks); the inner attention pads and keeps padding and
    wrapped tokens out.

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

    def add_to(self, x, hw_shape, residual):
        """``residual + self(x, hw_shape)`` as a new tensor; on the fast path the
        residual is added tile by tile as each tile's output is written."""
        return self.forward(x, hw_shape, residual)

    def forward(self, x, hw_shape, residual=None):
        b, n, c = x.shape
        h, w = hw_shape
        shift = self.shift_size if (h > self.window_size or w > self.window_size) else 0
        grid_residual = None if residual is None else residual.view(b, h, w, c)
        return self.window_attn(x.view(b, h, w, c), shift, grid_residual).reshape(b, n, c)
