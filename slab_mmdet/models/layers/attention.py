"""Simplified linear attention (SLA) and the spatial-reduction attentions of SLAB-PVT.

SLA (SLAB paper, Sec. 4.2): ``Attn(Q, K, V) = phi(Q) (phi(K)^T V) / (phi(Q) sum_j phi(K_j))``
with ``phi = ReLU``, computed right to left so that it is linear in the number of
tokens -- no N x N_kv matrix is ever formed -- plus a depth-wise convolution on V
that restores local detail. :func:`normalised_linear_attention` is the maths, shared
with the window attention of SLAB-Swin; :class:`ValueDWConv` is the depth-wise branch.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from ...utils import exporting_graph, is_int
from .fast_paths import fast_path
from .fusion import fold_norm
from .norms import NORM_LAYER_TYPES
from .transformer import build_token_norm, conv_on_tokens, nchw_to_nlc, nlc_to_nchw, resize_pos_table

SLA_EPS = 1e-6  # added to the normaliser, as in the reference implementation
# Queries per chunk of SpatialReductionAttentionBase.add_to: their projections and attention
# output (2-10 MiB at PVT's widths) stay in the last-level cache; 8,192 beat 2,048 and 4,096
# for SLAB and twin alike (benchmarks/chunk_sizes.py).
ATTENTION_CHUNK_TOKENS = 8192


def linear_attention_sums(k, v, key_mask=None):
    """What SLA sums over all keys (non-negative k (..., M, d), v (..., M, e)): ``k^T v`` (..., d, e)
    and ``sum_j k_j`` as a column (..., d, 1). ``key_mask`` (..., M, 1), traced only, is 0 on
    padding keys, whose values must be zero (so that only their sum needs the mask)."""
    keys_t = k.transpose(-2, -1)
    if exporting_graph():
        # ONNX Runtime's ReduceSum over the token axis runs ~10x slower than a product with a
        # column of ones (7 vs 0.6 ms for 60,800 x 64 tokens, 2 threads).
        return keys_t @ v, keys_t @ (torch.ones_like(v[..., :1]) if key_mask is None else key_mask)
    if key_mask is not None:
        raise ValueError('linear_attention_sums: key_mask is for traced graphs only')
    return keys_t @ v, k.sum(dim=-2).unsqueeze(-1)


def apply_linear_attention(q, kv, k_sum, eps=SLA_EPS, residual=None):
    """SLA's output for non-negative queries q (..., N, d) from :func:`linear_attention_sums`:
    ``q kv / (q k_sum + eps)``, plus ``residual`` (..., N, e) when given (the result then has
    the residual's dtype).

    In inference the sum is accumulated into ``residual`` in place (one pass, ``addcdiv_``):
    the attention's (N, e) output is never a tensor of its own."""
    normaliser = q @ k_sum                                          # (..., N, 1)
    operands = (q, kv, k_sum) if residual is None else (q, kv, k_sum, residual)
    # Out of place under autograd, and traced (ONNX has no in-place ops nor addcdiv).
    if exporting_graph() or any(t.requires_grad for t in operands):
        attended = (q @ kv) / (normaliser + eps)
        return attended if residual is None else residual + attended.to(residual.dtype)
    if residual is None:
        return (q @ kv).div_(normaliser.add_(eps))
    return residual.addcdiv_(q @ kv, normaliser.add_(eps))


def normalised_linear_attention(q, k, v, eps=SLA_EPS, residual=None, key_mask=None):
    """SLA's attention once phi = ReLU has been applied to q and k (by the caller):
    ``q (k^T v) / (q . sum_j k_j + eps)`` for non-negative q (..., N, d), k (..., M, d), v (..., M, e),
    plus ``residual`` (..., N, e) when given (see :func:`apply_linear_attention`); ``key_mask``
    as in :func:`linear_attention_sums`."""
    return apply_linear_attention(q, *linear_attention_sums(k, v, key_mask), eps=eps, residual=residual)


def at_least_fp32(*tensors):
    """SLA's sums over all tokens run in (at least) float32, also under mixed precision."""
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    return tuple(t.to(dtype) for t in tensors)


def split_heads(x, num_heads):
    """(B, N, h*d) -> (B, h, N, d)."""
    if num_heads == 1:
        return x.unsqueeze(1)   # no transpose: traced, it would be a copy of all tokens
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x):
    """(B, h, N, d) -> (B, N, h*d), contiguous (for one head the reshape alone can stay a
    transposed view, which the output projection would read strided)."""
    b, h, n, d = x.shape
    tokens_first = x.squeeze(1) if h == 1 else x.transpose(1, 2)   # one head: no transpose to trace
    if exporting_graph():
        # Always a copy: torch.export decides reshape-as-view from the example's strides, and
        # CPU SDPA's output strides differ from those of the decomposed graph it exports.
        return tokens_first.clone(memory_format=torch.contiguous_format).view(b, n, h * d)
    return tokens_first.reshape(b, n, h * d).contiguous()


class ValueDWConv(nn.Module):
    """SLA's depth-wise conv on V: one k x k kernel per head channel, shared by all heads.

    It runs on V's tokens as they come from the projection, (B, H*W, heads*d): channel
    ``i*d + j`` (head i) takes kernel j, so the whole map is one depth-wise conv over
    heads*d channels read channels-last, with no copy between heads and tokens."""

    def __init__(self, head_dim, kernel_size=5):
        super().__init__()
        if not is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
            # An even kernel with padding k // 2 would grow the map by one row and column.
            raise ValueError(f'SLA depth-wise conv: kernel_size must be an odd int >= 1, got {kernel_size!r}')
        self.dwc = nn.Conv2d(head_dim, head_dim, kernel_size, padding=kernel_size // 2, groups=head_dim)

    def forward(self, v, hw_shape, num_heads):
        """v: (B, H*W, heads*d) laid out on an H x W grid -> (B, H*W, heads*d), contiguous.
        ``num_heads`` is an int, not read from v's shape: traced, the kernel must be static."""
        b, n, c = v.shape
        # Channels-last (a view when v is contiguous; one copy of the kv projection's strided
        # half), so that the conv's output is channels-last too and goes back to tokens as a view.
        grid = v.reshape(b, hw_shape[0], hw_shape[1], c).permute(0, 3, 1, 2).contiguous(
            memory_format=torch.channels_last)
        bias = None if self.dwc.bias is None else self.dwc.bias.repeat(num_heads)
        out = F.conv2d(grid, self.dwc.weight.repeat(num_heads, 1, 1, 1), bias, padding=self.dwc.padding,
                       groups=num_heads * self.dwc.in_channels)
        return out.permute(0, 2, 3, 1).reshape(b, n, c)


class SpatialReductionAttentionBase(BaseModule):
    """Projections shared by PVT's attentions: q from all tokens; k and v from tokens
    spatially reduced by a stride-``sr_ratio`` conv followed by a norm (when sr_ratio > 1)."""

    def __init__(self, embed_dims, num_heads, sr_ratio=1, qkv_bias=True, proj_drop=0.,
                 norm_cfg=dict(type='PRepBN', eps=1e-6), deploy=False, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} is not divisible by num_heads {num_heads}')
        self.embed_dims, self.num_heads, self.sr_ratio = embed_dims, num_heads, sr_ratio
        self.q = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.kv = nn.Linear(embed_dims, embed_dims * 2, bias=qkv_bias)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(embed_dims, embed_dims, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = build_token_norm(norm_cfg, embed_dims, deploy)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def input_layers(self):
        """The layers that read this module's input (a preceding norm folds into them)."""
        return [self.q, self.sr if self.sr_ratio > 1 else self.kv]

    def kv_source(self, x, hw_shape):
        """The tokens k and v are projected from (B, M, C) -- spatially reduced and normalised
        when sr_ratio > 1 -- and the grid (h, w) they live on."""
        if self.sr_ratio == 1:
            return x, hw_shape
        grid = nlc_to_nchw(x, hw_shape)
        reduced = conv_on_tokens(self.sr, grid) if fast_path(x, self) else self.sr(grid)
        return self.norm(nchw_to_nlc(reduced)), (reduced.shape[2], reduced.shape[3])

    def kv_halves(self):
        """(weight, bias) of the k half and of the v half of the kv projection (views)."""
        c, bias = self.embed_dims, self.kv.bias
        return tuple((self.kv.weight[i * c:(i + 1) * c], None if bias is None else bias[i * c:(i + 1) * c])
                     for i in (0, 1))

    def keys_values(self, x, hw_shape):
        """k and v (B, M, C) and the grid (h, w) they live on."""
        source, kv_hw = self.kv_source(x, hw_shape)
        if not (fast_path(x, self) or exporting_graph()):
            k, v = self.kv(source).chunk(2, dim=-1)
            return k, v, kv_hw
        # Two products on the halves of the kv weight (the same arithmetic as one): k and v
        # each come out contiguous, not as strided halves of one (M, 2C) tensor (traced: no
        # Slice copies).
        k, v = (F.linear(source, *half) for half in self.kv_halves())
        return k, v, kv_hw

    def add_to(self, x, hw_shape, residual):
        """``residual + attn(x)`` as a new tensor. On the fast path
        (:func:`~.fast_paths.fast_path`) what needs all tokens (keys, values, their
        sums) is computed first and the queries' side -- q projection, attention, output
        projection, residual add -- a chunk of :data:`ATTENTION_CHUNK_TOKENS` queries at a time, in cache."""
        if not fast_path(x, self):
            return residual + self(x, hw_shape)
        context = self.key_context(x, hw_shape)
        out = torch.empty_like(residual)
        for start in range(0, x.shape[1], ATTENTION_CHUNK_TOKENS):
            rows = slice(start, start + ATTENTION_CHUNK_TOKENS)
            attended = self.attend_queries(x[:, rows], context, rows)
            torch.add(residual[:, rows], self.proj(attended), out=out[:, rows])
        return out

    def key_context(self, x, hw_shape):
        """Everything the queries attend to, computed from all of ``x`` (B, N, C)."""
        raise NotImplementedError

    def attend_queries(self, x, context, rows=slice(None)):
        """The attention (before the output projection) for the queries of ``x``, tokens
        ``rows`` of the map ``context`` was computed for -> (B, n, C)."""
        raise NotImplementedError

    def switch_to_deploy(self, name='attn'):
        if self.sr_ratio > 1 and isinstance(self.norm, NORM_LAYER_TYPES):
            self.norm = fold_norm(self.norm, f'{name}.norm', next_layers=[self.kv])


class SpatialReductionAttention(SpatialReductionAttentionBase):
    """PVT's softmax spatial-reduction attention (``'S'`` in ``attn_types``)."""

    def __init__(self, embed_dims, num_heads, sr_ratio=1, qkv_bias=True, attn_drop=0., proj_drop=0.,
                 norm_cfg=dict(type='PRepBN', eps=1e-6), deploy=False, init_cfg=None):
        super().__init__(embed_dims, num_heads, sr_ratio, qkv_bias, proj_drop, norm_cfg, deploy, init_cfg)
        self.attn_drop = attn_drop

    def forward(self, x, hw_shape):
        return self.proj_drop(self.proj(self.attend_queries(x, self.key_context(x, hw_shape))))

    def key_context(self, x, hw_shape):
        k, v, _ = self.keys_values(x, hw_shape)
        return split_heads(k, self.num_heads), split_heads(v, self.num_heads)

    def attend_queries(self, x, context, rows=slice(None)):
        q = split_heads(self.q(x), self.num_heads)
        out = F.scaled_dot_product_attention(q, *context, dropout_p=self.attn_drop if self.training else 0.)
        return merge_heads(out)


class SpatialReductionLinearAttention(SpatialReductionAttentionBase):
    """SLA with PVT's (optional) spatial reduction of keys and values (``'L'`` in ``attn_types``).

    As in the reference model: a learned positional encoding is added to the keys
    (after the kv projection, before the ReLU); it is stored on the keys' grid at the
    pre-training size and resized in 2-D to the actual grid. The depth-wise conv acts
    on V on the queries' (H, W) grid; when keys/values are spatially reduced, V is
    first resized to H*W tokens by 1-D linear interpolation along the flattened token
    sequence -- what the reference does at 224x224, generalised to any size.

    Args:
        pos_grid (tuple[int]): Grid (h, w) of the positional encoding, i.e. the keys'
            grid at the pre-training input size.
        kernel_size (int): Kernel of the depth-wise conv on V. Default: 5.
    """

    def __init__(self, embed_dims, num_heads, pos_grid, sr_ratio=1, qkv_bias=True, proj_drop=0.,
                 kernel_size=5, norm_cfg=dict(type='PRepBN', eps=1e-6), deploy=False, init_cfg=None):
        super().__init__(embed_dims, num_heads, sr_ratio, qkv_bias, proj_drop, norm_cfg, deploy, init_cfg)
        self.pos_grid = tuple(pos_grid)
        self.positional_encoding = nn.Parameter(torch.zeros(1, self.pos_grid[0] * self.pos_grid[1], embed_dims))
        self.value_conv = ValueDWConv(embed_dims // num_heads, kernel_size)

    def forward(self, x, hw_shape):
        return self.proj_drop(self.proj(self.attend_queries(x, self.key_context(x, hw_shape))))

    def key_context(self, x, hw_shape):
        """(the conv on V as (B, N, C) tokens, k^T v and sum_j k_j per head)."""
        if fast_path(x, self) or exporting_graph():
            source, kv_hw = self.kv_source(x, hw_shape)
            (k_weight, k_bias), v_half = self.kv_halves()
            k = self.positioned_keys(source, kv_hw, k_weight, k_bias)
            v = F.linear(source, *v_half)
        else:
            k, v, kv_hw = self.keys_values(x, hw_shape)
            k = F.relu(k + resize_pos_table(self.positional_encoding, self.pos_grid, kv_hw), inplace=True)
        grid_values = v
        if self.sr_ratio > 1:
            grid_values = F.interpolate(v.transpose(1, 2), size=hw_shape[0] * hw_shape[1], mode='linear',
                                        align_corners=False).transpose(1, 2)
        conv = self.value_conv(grid_values, hw_shape, self.num_heads)                   # (B, N, C), contiguous
        with torch.autocast(device_type=x.device.type, enabled=False):
            sums = linear_attention_sums(*at_least_fp32(*(split_heads(t, self.num_heads) for t in (k, v))))
        return conv, sums

    def positioned_keys(self, source, kv_hw, weight, bias):
        """Inference: ``relu(source @ weight^T + bias + positional encoding)`` in three passes over
        the keys instead of five: the resized positional table, with the bias added before the
        resize (bilinear weights sum to one), is the buffer the product accumulates into."""
        table = self.positional_encoding.clone() if bias is None else self.positional_encoding + bias
        if exporting_graph():   # the same sum, out of place: one Add node instead of two
            return F.relu(source @ weight.t() + resize_pos_table(table, self.pos_grid, kv_hw))
        k = resize_pos_table(table, self.pos_grid, kv_hw).expand(source.shape[0], -1, -1).contiguous()
        k.view(-1, k.shape[-1]).addmm_(source.reshape(-1, source.shape[-1]), weight.t())
        return k.relu_()

    def attend_queries(self, x, context, rows=slice(None)):
        conv, sums = context
        q = self.q(x)
        q = split_heads(F.relu(q, inplace=not q.requires_grad), self.num_heads)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if exporting_graph():   # added after merging the heads: one transpose fewer in the graph
                return conv[:, rows] + merge_heads(apply_linear_attention(*at_least_fp32(q), *sums)).to(conv.dtype)
            # The attention is summed into the conv's output, seen per head: (B, h, n, d).
            out = apply_linear_attention(*at_least_fp32(q), *sums,
                                         residual=split_heads(conv[:, rows], self.num_heads))
        return out.transpose(1, 2).flatten(2)
