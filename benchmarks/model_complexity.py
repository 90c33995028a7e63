"""Parameters and FLOPs of every COCO Mask R-CNN config, and a hand count that checks the counter.

FLOPs are mmengine's (``mmengine.analysis.FlopAnalyzer``: one multiply-add = one FLOP, as
fvcore and the detection papers count) of backbone + neck (``extract_feat``) at one
1280x800 input (batch 1, 800x1280 tensor). mmengine has no handle for
``aten::scaled_dot_product_attention``, which softmax attention runs through (ours and,
inside ``nn.MultiheadAttention``, mmdet's PVT), so it silently counts 0 for it; this script
adds one (``2 * B * h * N * M * d``: QK^T and AV) and reports both totals. Ops that stay
uncounted are listed. SLA is plain matmul/einsum and counted.

The hand count: one SLAB-PVT-S stage-1 block (N tokens, C channels, h heads, keys reduced
by ``la_sr_ratio``) from the layer shapes, against the counter on that block alone.

    python benchmarks/model_complexity.py --out-dir work_dirs/complexity
"""
import argparse
import json
import os
import os.path as osp

import torch

from bootstrap import REPO
from slab_mmdet.benchmark.peers import PVTV2_BACKBONES as PVTV2
from slab_mmdet.benchmark.peers import TIMM_PEER_BACKBONES as TIMM, TIMM_PEER_CHANNELS

HW = (800, 1280)
# name -> (config, backbone override, neck in_channels override)
COMPLEXITY_MODELS = {
    'PVT-T': ('configs/mask_rcnn_pvt_t.py', None, None),
    'PVT-T-PRepBN': ('configs/mask_rcnn_pvt_t_prepbn.py', None, None),
    'SLAB-PVT-T': ('configs/mask_rcnn_slab_pvt_t.py', None, None),
    'PVTv2-b1': ('configs/mask_rcnn_pvt_t.py', PVTV2['b1'], [64, 128, 320, 512]),
    'PVT-T twin': ('configs/mask_rcnn_pvt_t_twin.py', None, None),
    'EfficientViT-B2 (timm)': ('configs/mask_rcnn_pvt_t.py', TIMM['efficientvit_b2'],
                               list(TIMM_PEER_CHANNELS['efficientvit_b2'])),
    'PVT-S': ('configs/mask_rcnn_pvt_s.py', None, None),
    'PVT-S-PRepBN': ('configs/mask_rcnn_pvt_s_prepbn.py', None, None),
    'SLAB-PVT-S': ('configs/mask_rcnn_slab_pvt_s.py', None, None),
    'PVTv2-b2': ('configs/mask_rcnn_pvt_s.py', PVTV2['b2'], [64, 128, 320, 512]),
    'PVT-S twin': ('configs/mask_rcnn_pvt_s_twin.py', None, None),
    'EfficientViT-B3 (timm)': ('configs/mask_rcnn_pvt_s.py', TIMM['efficientvit_b3'],
                               list(TIMM_PEER_CHANNELS['efficientvit_b3'])),
    'SLAB-PVT-M': ('configs/mask_rcnn_slab_pvt_m.py', None, None),
    'Swin-T': ('configs/mask_rcnn_swin_t.py', None, None),
    'Swin-T-PRepBN': ('configs/mask_rcnn_swin_t_prepbn.py', None, None),
    'Swin-T twin': ('configs/mask_rcnn_swin_t_twin.py', None, None),
    'SLAB-Swin-T': ('configs/mask_rcnn_slab_swin_t.py', None, None),
    'Swin-S-PRepBN': ('configs/mask_rcnn_swin_s_prepbn.py', None, None),
    'SLAB-Swin-S': ('configs/mask_rcnn_slab_swin_s.py', None, None),
}


def sdpa_flop_jit(inputs, outputs):
    """QK^T and AV of scaled_dot_product_attention: 2 * prod(batch dims) * N * M * d."""
    from mmengine.analysis.jit_handles import get_shape
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    *batch, n, d = q
    m = k[-2]
    count = 1
    for b in batch:
        count *= b
    return 2 * count * n * m * d


class Features(torch.nn.Module):
    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, x):
        return self.detector.extract_feat(x)


def flops(module, inputs):
    from mmengine.analysis import FlopAnalyzer
    plain = FlopAnalyzer(module, inputs).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    total_plain = plain.total()
    fixed = FlopAnalyzer(module, inputs).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    fixed.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit)
    total_fixed = fixed.total()
    uncounted = {op: n for op, n in fixed.unsupported_ops().items()
                 if not op.startswith(('aten::add', 'aten::mul', 'aten::div', 'aten::sub', 'aten::relu', 'aten::gelu',
                                       'aten::softmax', 'aten::sum', 'aten::pad', 'aten::constant_pad', 'aten::roll',
                                       'aten::clamp', 'aten::mean', 'aten::max_pool', 'aten::rsub', 'aten::masked',
                                       'aten::fill', 'aten::one_hot', 'aten::copy', 'aten::unsqueeze', 'aten::eq',
                                       'aten::lt', 'aten::ge', 'aten::__and__', 'aten::remainder', 'aten::arange',
                                       'aten::zeros', 'aten::scatter', 'aten::expand', 'aten::repeat', 'aten::neg',
                                       'aten::floor', 'aten::ones', 'aten::select', 'aten::linspace'))}
    return total_plain, total_fixed, uncounted


def build(config, backbone, in_channels):
    from slab_mmdet.apis import load_detector
    options = None if backbone is None else {'model.backbone': dict(_delete_=True, **backbone),
                                             'model.neck.in_channels': in_channels}
    return load_detector(osp.join(REPO, config), cfg_options=options)


def hand_count_sla_block():
    """One SLAB-PVT-S stage-1 block at 1280x800 by hand vs the counter on that block."""
    from mmdet.registry import MODELS as REG
    from mmengine.analysis import FlopAnalyzer
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    backbone = REG.build(dict(type='SLABPyramidVisionTransformer', arch='small')).eval()
    block = backbone.stages[0].blocks[0]
    attn = block.attn
    h, w = HW[0] // 4, HW[1] // 4
    n, c, heads = h * w, attn.embed_dims, attn.num_heads
    d = c // heads
    r = attn.sr_ratio
    m = (h // r) * (w // r)
    hidden = block.mlp.fc1.out_features
    k = attn.value_conv.dwc.kernel_size[0]
    parts = dict(
        q=n * c * c,
        sr_conv=m * c * c * r * r if r > 1 else 0,
        kv=m * c * 2 * c,
        kT_v=heads * m * d * d,          # K^T V per head
        q_kv=heads * n * d * d,          # Q (K^T V)
        normaliser=heads * n * d,        # Q . sum_j K_j
        value_dwconv=n * c * k * k,
        proj=n * c * c,
        mlp=2 * n * c * hidden,
    )

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = block

        def forward(self, x):
            return self.block(x, (h, w))

    x = torch.randn(1, n, c)
    analyzer = FlopAnalyzer(Wrap(), (x,)).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    counted = analyzer.total()
    norms = analyzer.by_operator()
    return dict(block='SLAB-PVT-S stage 1, block 0', tokens=n, channels=c, heads=heads, keys=m, kernel=k,
                hand=parts, hand_total=sum(parts.values()), counted=counted,
                counted_by_operator=dict(norms), unsupported=dict(analyzer.unsupported_ops()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out-dir', default=osp.join(REPO, 'work_dirs', 'complexity'))
    parser.add_argument('--only', nargs='+', choices=sorted(COMPLEXITY_MODELS))
    args = parser.parse_args(argv)
    import slab_mmdet  # noqa: F401
    torch.set_grad_enabled(False)
    os.makedirs(args.out_dir, exist_ok=True)
    rows = []
    for name in args.only or COMPLEXITY_MODELS:
        config, backbone, in_channels = COMPLEXITY_MODELS[name]
        model = build(config, backbone, in_channels)
        x = torch.zeros(1, 3, *HW)
        plain, fixed, uncounted = flops(Features(model), (x,))
        # The latency record times the backbone alone: its FLOPs ratios must be the backbone's.
        backbone_fixed = flops(model.backbone, (x,))[1]
        rows.append(dict(model=name, config=config,
                         params_backbone_m=sum(p.numel() for p in model.backbone.parameters()) / 1e6,
                         params_detector_m=sum(p.numel() for p in model.parameters()) / 1e6,
                         gflops_mmengine=plain / 1e9, gflops=fixed / 1e9, gflops_backbone=backbone_fixed / 1e9,
                         uncounted_ops=uncounted))
        print(f'[complexity] {name}: {rows[-1]["params_detector_m"]:.1f} M params, '
              f'{fixed / 1e9:.1f} GFLOPs ({plain / 1e9:.1f} as mmengine counts)', flush=True)
    hand = hand_count_sla_block()
    lines = ['Backbone and backbone + neck FLOPs at 1280x800 (batch 1, 800x1280 input), parameters of the whole '
             'Mask R-CNN and of the backbone (`benchmarks/model_complexity.py`).', '',
             '| model | params (M), Mask R-CNN | params (M), backbone | GFLOPs, backbone | GFLOPs, backbone + neck | '
             'GFLOPs as mmengine counts (no SDPA), backbone + neck |', '| --- | --- | --- | --- | --- | --- |']
    for r in rows:
        lines.append(f'| {r["model"]} | {r["params_detector_m"]:.1f} | {r["params_backbone_m"]:.1f} | '
                     f'{r["gflops_backbone"]:.1f} | {r["gflops"]:.1f} | {r["gflops_mmengine"]:.1f} |')
    lines += ['', f'Hand count of one SLA block ({hand["block"]}: N = {hand["tokens"]} tokens, C = {hand["channels"]}, '
              f'{hand["heads"]} head(s), {hand["keys"]} keys, {hand["kernel"]}x{hand["kernel"]} value conv): '
              f'{hand["hand_total"] / 1e9:.3f} GFLOPs by hand, {hand["counted"] / 1e9:.3f} counted '
              f'(by operator: {", ".join(f"{k} {v / 1e9:.3f}" for k, v in hand["counted_by_operator"].items())}; '
              f'the hand count leaves out the block\'s two norms, LayerNorms at g = 1 as built, and the '
              f'positional-encoding resize, which the counter includes). Matmuls of SLA by hand: '
              f'{(hand["hand"]["kT_v"] + hand["hand"]["q_kv"] + hand["hand"]["normaliser"]) / 1e9:.3f}.']
    table = '\n'.join(lines)
    with open(osp.join(args.out_dir, 'complexity.md'), 'w') as f:
        f.write(table + '\n')
    with open(osp.join(args.out_dir, 'complexity.json'), 'w') as f:
        json.dump(dict(rows=rows, hand_count=hand), f, indent=1)
    print(table)


if __name__ == '__main__':
    main()
