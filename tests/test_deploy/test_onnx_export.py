"""ONNX export of fused SLAB detectors (slab_mmdet.deploy.onnx_export, tools/export_onnx.py).

Checked, not assumed: ONNX Runtime gives PyTorch's features within 1e-4 (relative) at
sizes other than the traced one, odd ones included; the graph of a fused model holds no
normalisation node, and its SLA stages form no token-by-token matrix (the check is shown
to find the one softmax attention forms); models that cannot be fused are refused.
"""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from slab_mmdet import apis
from slab_mmdet.deploy import deploy_config, fuse_detector
from slab_mmdet.deploy.equivalence import onnx_feature_differences
from slab_mmdet.deploy.graph import NORM_OPS, norm_nodes, onnx_session, read_graph, token_by_token_products
from slab_mmdet.deploy.onnx_export import FeatureExtractor, export_onnx
from testing_utils.helpers import REPO_ROOT, annealed_mask_rcnn, run_python

PVT = 'configs/mini/mask_rcnn_slab_pvt_t.py'
SWIN = 'configs/mini/mask_rcnn_slab_swin_t.py'
EXPORT_HW = (256, 320)
# Other sizes, not multiples of 32 among them; SLAB-Swin's shifted windows are exact in the
# graph for inputs whose longer side is above 224 (docs/deploy.md).
CHECK_SIZES = [(250, 333), (320, 288), (97, 256)]
# Where no token count equals a channel width (PVT-T: 64-2048, Swin-T: 96-3072), so that a
# linear layer's (tokens, channels) output cannot pass for a (tokens, tokens) product.
TOKEN_HW = (224, 352)


@pytest.fixture(scope='module', params=[PVT, SWIN], ids=['slab_pvt_t', 'slab_swin_t'])
def exported(request, tmp_path_factory):
    model = annealed_mask_rcnn(request.param)
    report = fuse_detector(model)
    path = str(tmp_path_factory.mktemp('onnx') / 'features.onnx')
    info = export_onnx(model, path, input_hw=EXPORT_HW, logger=lambda *a: None)
    return request.param, model, report, path, info


def test_onnx_runtime_gives_pytorch_features_at_other_sizes(exported):
    _, model, _, path, info = exported
    diffs = onnx_feature_differences(FeatureExtractor(model).eval(), onnx_session(path), [EXPORT_HW] + CHECK_SIZES)
    assert set(diffs) == {EXPORT_HW, *CHECK_SIZES}
    assert max(diffs.values()) < 1e-4, diffs
    assert info['outputs'] == [f'feat{i}' for i in range(5)]   # the FPN's 5 levels, in extract_feat's order


def test_fused_graph_holds_no_normalisation_node(exported):
    _, model, report, path, _ = exported
    assert report['removed_norms'] > 20 and report['kept_norms'] == 0
    graph = read_graph(path)
    assert norm_nodes(graph) == []
    # ...while the same detector unfused exports BatchNormalization nodes (the check can fail).
    config = exported[0]
    unfused = annealed_mask_rcnn(config)
    unfused_path = osp.join(osp.dirname(path), 'unfused.onnx')
    export_onnx(unfused, unfused_path, input_hw=EXPORT_HW, logger=lambda *a: None)
    assert 'BatchNormalization' in norm_nodes(read_graph(unfused_path))


def test_graph_sums_no_tokens_with_reduce_sum(exported):
    """SLA's sum over all keys is traced as a product with a column of ones: ONNX Runtime's
    ReduceSum over the token axis is ~10x slower (docs/benchmarks.md, ONNX Runtime)."""
    _, _, _, path, _ = exported
    ops = [node.op_type for node in read_graph(path).graph.node]
    assert 'MatMul' in ops and 'ReduceSum' not in ops


def sla_token_counts(model, hw):
    """Token counts of the SLA stages of a SLAB backbone at input ``hw``, for a
    token-by-token product to be recognised by: each window's tokens (Swin) or the
    stage's map and its spatially reduced keys (PVT)."""
    from slab_mmdet.models.layers.attention import SpatialReductionAttentionBase
    from slab_mmdet.models.layers.window_attention import ShiftedWindowAttention, WindowLinearAttention
    counts = set()
    for i, stage in enumerate(model.backbone.stages):
        h, w = hw[0] // (4 * 2 ** i), hw[1] // (4 * 2 ** i)
        for m in stage.modules():
            if isinstance(m, ShiftedWindowAttention) and isinstance(m.window_attn, WindowLinearAttention):
                counts.add(m.window_size ** 2)
            elif isinstance(m, SpatialReductionAttentionBase) and type(m).__name__ == 'SpatialReductionLinearAttention':
                counts.update({h * w, (h // m.sr_ratio) * (w // m.sr_ratio)})
    assert counts, 'no SLA stage found'
    return counts


@pytest.mark.parametrize('config', [PVT, SWIN])
def test_sla_stages_form_no_token_by_token_matrix(config, tmp_path):
    model = annealed_mask_rcnn(config)
    fuse_detector(model)
    path = str(tmp_path / 'static.onnx')
    export_onnx(model, path, input_hw=TOKEN_HW, static=True, logger=lambda *a: None)
    assert token_by_token_products(read_graph(path), TOKEN_HW, sla_token_counts(model, TOKEN_HW)) == []


def test_token_by_token_check_finds_softmax_attention(tmp_path):
    """The same check on PVT-T-PRepBN (softmax attention in every stage) finds its N x N_kv matrices."""
    cfg = Config.fromfile(osp.join(REPO_ROOT, PVT))
    cfg.model.backbone.attn_types = 'SSSS'
    config = tmp_path / 'pvt_softmax.py'
    cfg.dump(str(config))
    model = annealed_mask_rcnn(str(config))
    fuse_detector(model)
    path = str(tmp_path / 'softmax.onnx')
    export_onnx(model, path, input_hw=TOKEN_HW, static=True, logger=lambda *a: None)
    counts = sla_token_counts(annealed_mask_rcnn(PVT), TOKEN_HW)   # the same sizes, from the SLA model
    found = token_by_token_products(read_graph(path), TOKEN_HW, counts)
    assert len(found) >= 4, found   # at least one per stage
    h, w = TOKEN_HW[0] // 4, TOKEN_HW[1] // 4
    assert any(shape[-2:] == (h * w, (h // 8) * (w // 8)) for _, shape in found)   # stage 1: N x N/64


def test_rpn_head_exports_with_the_features(tmp_path):
    model = annealed_mask_rcnn(PVT)
    fuse_detector(model)
    path = str(tmp_path / 'rpn.onnx')
    info = export_onnx(model, path, input_hw=EXPORT_HW, with_rpn_head=True, logger=lambda *a: None)
    levels = [f'feat{i}' for i in range(5)]
    assert info['outputs'] == levels + [f'rpn_cls{i}' for i in range(5)] + [f'rpn_bbox{i}' for i in range(5)]
    assert [o.name for o in read_graph(path).graph.output] == info['outputs']
    diffs = onnx_feature_differences(FeatureExtractor(model, with_rpn_head=True).eval(), onnx_session(path),
                                     [EXPORT_HW, (250, 333)])
    assert max(diffs.values()) < 1e-4, diffs


def test_export_refuses_bad_input(tmp_path):
    model = annealed_mask_rcnn(PVT)
    with pytest.raises(ValueError, match='training mode'):
        export_onnx(copy.deepcopy(model).train(), str(tmp_path / 'a.onnx'))
    with pytest.raises(ValueError, match=r'height must be an int >= 32, got 16'):
        export_onnx(model, str(tmp_path / 'a.onnx'), input_hw=(16, 320))


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """A g = 0 training checkpoint, a g = 1 one, and a fused checkpoint with its deploy config."""
    root = tmp_path_factory.mktemp('export_ckpts')
    model = annealed_mask_rcnn(PVT)
    torch.save(dict(state_dict=model.state_dict()), root / 'g0.pth')
    fresh = annealed_mask_rcnn(PVT)
    for m in fresh.modules():
        if hasattr(m, 'set_g'):
            m.set_g(1.0)
    torch.save(dict(state_dict=fresh.state_dict()), root / 'g1.pth')
    report = fuse_detector(model)
    deploy_config(Config.fromfile(osp.join(REPO_ROOT, PVT)), report['out_norms_folded']).dump(str(root / 'deploy.py'))
    torch.save(dict(state_dict=model.state_dict()), root / 'fused.pth')
    return root


@pytest.mark.parametrize('config, checkpoint', [(PVT, 'g0.pth'), ('deploy.py', 'fused.pth')],
                         ids=['training_config_g0', 'deploy_config_fused'])
def test_cli_exports_and_checks(checkpoints, config, checkpoint, tmp_path):
    config = config if config == PVT else str(checkpoints / config)
    out = tmp_path / 'model.onnx'
    proc = run_python(['tools/export_onnx.py', config, str(checkpoints / checkpoint), '--out', str(out),
                       '--shape', '256x320', '--check', '250x333', '192x448'])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and norm_nodes(read_graph(str(out))) == []
    for size in ('256x320', '250x333', '192x448'):
        assert f'ONNX Runtime vs PyTorch at {size}: largest relative difference' in proc.stdout
    assert ('already fused' in proc.stdout) == (checkpoint == 'fused.pth')


def test_cli_refuses_a_model_that_still_anneals(checkpoints, tmp_path):
    proc = run_python(['tools/export_onnx.py', PVT, str(checkpoints / 'g1.pth'), '--out', str(tmp_path / 'm.onnx')])
    assert proc.returncode != 0
    assert 'cannot be fused' in proc.stderr and 'g = 0' in proc.stderr
    assert not (tmp_path / 'm.onnx').exists()


def test_cli_refuses_bad_arguments(checkpoints, tmp_path):
    ckpt = str(checkpoints / 'g0.pth')
    cases = [
        ([PVT, ckpt, '--out', str(tmp_path / 'm.txt')], 'must name a .onnx file'),
        ([PVT, str(tmp_path / 'missing.pth'), '--out', str(tmp_path / 'm.onnx')], 'does not exist'),
        # A package config is a config (only the missing checkpoint is refused), a wrong one is named.
        (['mmdet::retinanet/retinanet_r18_fpn_1x_coco.py', str(tmp_path / 'missing.pth'), '--out',
          str(tmp_path / 'm.onnx')], "checkpoint '" + str(tmp_path / 'missing.pth') + "' does not exist"),
        (['mmdet::no/such.py', ckpt, '--out', str(tmp_path / 'm.onnx')], "config not found: 'mmdet::no/such.py'"),
        ([PVT, ckpt, '--out', str(tmp_path / 'm.onnx'), '--shape', '800'], 'expected HEIGHTxWIDTH'),
    ]
    existing = tmp_path / 'exists.onnx'
    existing.write_bytes(b'')
    cases.append(([PVT, ckpt, '--out', str(existing)], 'pass --force'))
    for args, message in cases:
        proc = run_python(['tools/export_onnx.py'] + args)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr[-500:])


@pytest.mark.slow
@pytest.mark.parametrize('detector', [False, True], ids=['features', 'detector'])
def test_the_authors_recipe_exports_with_its_layernorm_output_norms_named(detector, tmp_path):
    """norm_eval=True (the frozen_bn configs): g = 0 everywhere, LayerNorm output norms. They stay,
    reported by name; every other norm is folded away."""
    from slab_mmdet.deploy.export import export_checked
    from testing_utils.helpers import anneal_and_randomise_norms
    options = {'model.backbone.norm_eval': True}
    model = anneal_and_randomise_norms(apis.load_detector(PVT, cfg_options=options, init_weights=True))
    path = tmp_path / 'frozen_bn.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    out = tmp_path / 'model.onnx'
    result = export_checked(PVT, str(path), str(out), detector=detector, input_hw=(256, 320), check_sizes=[],
                            cfg_options=options, logger=None)
    assert result['kept_norms'] == [f'backbone.norm{i}' for i in range(4)]
    norms = [n.name for n in read_graph(str(out)).graph.node if n.op_type in NORM_OPS]
    assert len(norms) == 4 and all(n.startswith(tuple(f'/backbone/norm{i}/' for i in range(4))) for n in norms)


def test_a_corrupt_graph_is_refused_naming_the_file(tmp_path):
    """A truncated or corrupt .onnx is refused by name and reason, not with ONNX Runtime's traceback."""
    bad = tmp_path / 'truncated.onnx'
    bad.write_bytes(b'\x08\x07' + b'not a protobuf' * 8)
    proc = run_python(['tools/test_onnx.py', PVT, str(bad)])
    assert proc.returncode != 0
    assert f'error: {bad} is not a readable ONNX graph (InvalidProtobuf: Protobuf parsing failed.)' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_dynamo_exporter_writes_backbone_and_neck_with_dynamic_size(tmp_path):
    """torch's dynamo exporter (torch.export -> ONNX), dynamic H and W declared as multiples of
    32: ONNX Runtime gives PyTorch's features at sizes other than the traced one, and the
    fused graph holds no normalisation node. (SLAB-Swin-T exports the same way but takes
    minutes: docs/deploy.md.)"""
    model = annealed_mask_rcnn(PVT)
    fuse_detector(model)
    path = str(tmp_path / 'features.onnx')
    lines = []
    info = export_onnx(model, path, input_hw=EXPORT_HW, logger=lines.append, exporter='dynamo')
    assert info['exporter'] == 'dynamo' and 'dynamo exporter' in lines[-1]
    sizes = [EXPORT_HW, (320, 448), (416, 288)]   # padded inputs: multiples of 32
    diffs = onnx_feature_differences(FeatureExtractor(model).eval(), onnx_session(path), sizes)
    assert max(diffs.values()) < 1e-4, diffs
    assert norm_nodes(read_graph(path)) == []


def test_dynamo_exporter_refuses_what_it_cannot_write(tmp_path):
    model = annealed_mask_rcnn(PVT)
    with pytest.raises(ValueError, match="the whole detector exports through the 'torchscript' exporter only"):
        export_onnx(model, str(tmp_path / 'd.onnx'), detector=True, exporter='dynamo')
    with pytest.raises(ValueError, match='traced at a multiple of 32, as mmdet pads its inputs; got 250x320'):
        export_onnx(model, str(tmp_path / 'd.onnx'), input_hw=(250, 320), exporter='dynamo')
    with pytest.raises(ValueError, match=r"exporter must be one of \('torchscript', 'dynamo'\), got 'jit'"):
        export_onnx(model, str(tmp_path / 'd.onnx'), exporter='jit')
    assert not (tmp_path / 'd.onnx').exists()
