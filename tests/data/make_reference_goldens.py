"""Regenerate the reference goldens used by tests/test_reference_fidelity.py.

The goldens are the outputs of the authors' classification models (github
xinghaochen/SLAB, ``classification/models``) for small random networks: a
reference-format state dict, an input image tensor, and the four stage outputs in
eval mode (g = 0) and train mode (g = 0.5). The tests convert the state dict with
``slab_mmdet.converters`` and check that our backbones reproduce those outputs.

This script is not run by the tests: it needs a checkout of the reference code and
its dependencies (timm, einops). Usage:

    python tests/data/make_reference_goldens.py --reference-dir /path/to/SLAB [--out-dir tests/data]
"""
import argparse
import importlib
import os.path as osp
import sys
import types

import torch


def import_reference_module(reference_dir, name):
    """Import classification/models/<name>.py without running its package __init__."""
    models_dir = osp.join(reference_dir, 'classification', 'models')
    if not osp.isdir(models_dir):
        raise SystemExit(f'{models_dir} not found: --reference-dir must be a checkout of xinghaochen/SLAB')
    if 'models' not in sys.modules:
        pkg = types.ModuleType('models')
        pkg.__path__ = [models_dir]
        sys.modules['models'] = pkg
    return importlib.import_module(f'models.{name}')


def randomise(model):
    """Random weights, non-trivial BN statistics, alpha and LayerNorm affines."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.dtype.is_floating_point or key.endswith('attn_mask'):
                continue
            if key.endswith('running_var'):
                value.uniform_(0.5, 2.0)
            elif value.dim() == 1 and key.endswith('weight'):
                value.normal_(1.0, 0.3)
            else:
                value.normal_(0, 0.02 if value.dim() > 1 else 0.3)


def set_g(model, g):
    for m in model.modules():
        if type(m).__name__ == 'LinearNorm':
            m.total_step.fill_(1000)
            m.iter.fill_(round(g * 1000))
            if hasattr(m, 'warm'):
                m.warm.fill_(0)


def stage_outputs(model, blocks_of_stages, x, train, g):
    """Outputs of each stage's last block (before any downsampling or output norm)."""
    set_g(model, g)
    model.train(train)
    outs = []
    hooks = [blocks[-1].register_forward_hook(lambda m, i, o: outs.append(o.detach().clone()))
             for blocks in blocks_of_stages]
    with torch.no_grad():
        model.forward_features(x)
    for h in hooks:
        h.remove()
    return outs


def make(model, blocks_of_stages, description, path):
    torch.manual_seed(0)
    randomise(model)
    x = torch.randn(1, 3, 224, 224).half().float()   # stored as fp16 to keep the file small
    set_g(model, 0.0)
    # Saved before any forward pass: train mode updates the BN running statistics.
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    golden = dict(description=description, input=x.half(), state_dict=state_dict,
                  eval_g0=stage_outputs(model, blocks_of_stages, x, False, 0.0),
                  train_g05=stage_outputs(model, blocks_of_stages, x, True, 0.5))
    torch.save(golden, path)
    print(f'wrote {path}')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--reference-dir', required=True, help='checkout of github xinghaochen/SLAB')
    parser.add_argument('--out-dir', default=osp.dirname(osp.abspath(__file__)))
    args = parser.parse_args()
    sys.path.insert(0, osp.join(args.reference_dir, 'classification'))

    pvt = import_reference_module(args.reference_dir, 'slab_pvt')
    torch.manual_seed(0)
    model = pvt.PyramidVisionTransformer(
        patch_size=4, embed_dims=[16, 32, 40, 64], num_heads=[1, 2, 5, 8], mlp_ratios=[2, 2, 2, 2],
        qkv_bias=True, norm_layer=pvt.linearnorm, depths=[2, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
        la_sr_ratios='8121', attn_type='LSLL', num_classes=10)
    make(model, [model.block1, model.block2, model.block3, model.block4],
         'reference slab_pvt.PyramidVisionTransformer, embed_dims 16-32-40-64, depths 2-1-1-1, '
         "attn 'LSLL', la_sr_ratios 8-1-2-1", osp.join(args.out_dir, 'reference_golden_pvt.pt'))

    swin = import_reference_module(args.reference_dir, 'slab_swin')
    torch.manual_seed(0)
    model = swin.SlabSwinTransformer(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=56,
                                     attn_type='LLSS', drop_path_rate=0.0, num_classes=10)
    make(model, [layer.blocks for layer in model.layers],
         "reference slab_swin.SlabSwinTransformer, embed_dim 16, depths 2-2-2-2, attn 'LLSS', window 56",
         osp.join(args.out_dir, 'reference_golden_swin.pt'))


if __name__ == '__main__':
    main()
