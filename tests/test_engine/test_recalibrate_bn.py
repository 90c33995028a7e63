"""BatchNorm recalibration: the library function, the PRepBNHook option and tools/recalibrate_bn.py."""
import copy
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmcv.cnn.bricks.drop import DropPath
from mmengine.model import BaseModel
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, default_collate

from slab_mmdet.engine import bn_layers_to_recalibrate, recalibrate_bn, recalibrate_checkpoint
from slab_mmdet.models.layers import PRepBN
from testing_utils.helpers import ToyTokenDataset, ToyTokenModel, mini_config, run_python, runner_log_text, toy_runner


# These models are tiny: one thread is much faster than two on the shared 2-core machine.
pytestmark = pytest.mark.usefixtures('one_torch_thread')


class DropModel(BaseModel):
    """Tokens -> PRepBN(g=0) -> Dropout -> residual DropPath(Linear) -> PRepBN(g=0.3) -> frozen BN.

    `bn_frozen` stays in eval mode under train() (like a norm_eval=True backbone).
    Records (dropout.training, drop_path.training) at every forward.
    """

    def __init__(self, g2=0.3):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(4, 8)
        self.norm1 = PRepBN(8)
        self.norm1.set_g(0.0)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 8)
        self.drop_path = DropPath(0.5)
        self.norm2 = PRepBN(8)
        self.norm2.set_g(g2)
        self.bn_frozen = nn.BatchNorm1d(8)
        with torch.no_grad():
            self.bn_frozen.running_mean.uniform_(-1, 1)
            self.bn_frozen.running_var.uniform_(0.5, 2)
            for m in (self.norm1, self.norm2):
                m.repbn.bn.running_mean.fill_(3.0)
                m.repbn.bn.running_var.fill_(7.0)
        self.modes_seen = []

    def train(self, mode=True):
        super().train(mode)
        self.bn_frozen.eval()
        return self

    def forward(self, inputs, data_samples=None, mode='tensor'):
        self.modes_seen.append((self.drop.training, self.drop_path.training))
        x = self.drop(self.norm1(self.proj(inputs)))
        x = self.norm2(x + self.drop_path(self.fc(x)))
        return self.bn_frozen(x.reshape(-1, 8)).reshape(x.shape)


def loader(batch_size=2):
    return DataLoader(ToyTokenDataset(8), batch_size=batch_size, shuffle=False, collate_fn=default_collate)


def reference_stats(model, batches, bn_names):
    """Per BN: the average over `batches` of the per-batch mean and unbiased variance of its input.

    Runs a copy of `model` as recalibration must (eval mode, the BNs on batch statistics)
    and captures each BN's input with forward hooks.
    """
    model = copy.deepcopy(model).eval()
    inputs = {name: [] for name in bn_names}
    modules = dict(model.named_modules())
    for name in bn_names:
        modules[name].train()
        modules[name].register_forward_hook(lambda m, args, out, name=name: inputs[name].append(args[0].detach()))
    with torch.no_grad():
        for batch in batches:
            model(**model.data_preprocessor(batch, True), mode='tensor')
    stats = {}
    for name, xs in inputs.items():
        assert len(xs) == len(batches)
        stats[name] = (torch.stack([x.mean(0) for x in xs]).mean(0),
                       torch.stack([x.var(0, unbiased=True) for x in xs]).mean(0))
    return stats


@pytest.mark.parametrize('num_iters', [3, 6])  # 6 > the loader's 4 batches: it is gone through again
def test_recalibrated_stats_equal_direct_statistics(num_iters):
    model = DropModel().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    targets = ['norm1.repbn.bn', 'norm2.repbn.bn']
    assert [n for n, _ in bn_layers_to_recalibrate(model)] == targets  # bn_frozen is not one
    batches = list(loader())
    expected = reference_stats(model, (batches * 2)[:num_iters], targets)

    names = recalibrate_bn(model, loader(), num_iters)

    assert names == targets
    modules = dict(model.named_modules())
    for name in targets:
        bn = modules[name]
        torch.testing.assert_close(bn.running_mean, expected[name][0])
        torch.testing.assert_close(bn.running_var, expected[name][1])
        assert int(bn.num_batches_tracked) == num_iters
        assert bn.momentum == 0.1  # restored
    # Dropout and drop-path were off; modes are back; weights and the frozen BN unchanged.
    assert model.modes_seen == [(False, False)] * num_iters
    assert all(m.training for m in model.modules() if m is not model.bn_frozen) and not model.bn_frozen.training
    after = model.state_dict()
    for key, value in before.items():
        if not key.startswith(tuple(targets)) or not key.split('.')[-1].startswith(('running_', 'num_batches')):
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)


def test_bn_no_batch_reaches_keeps_its_statistics(capsys):
    model = DropModel(g2=1.0).eval()  # g = 1: norm2 runs no BatchNorm
    old_mean = model.norm2.repbn.bn.running_mean.clone()
    names = recalibrate_bn(model, loader(), 2)
    assert names == ['norm1.repbn.bn']
    torch.testing.assert_close(model.norm2.repbn.bn.running_mean, old_mean)
    assert int(model.norm1.repbn.bn.num_batches_tracked) == 2
    assert not any(m.training for m in model.modules())  # eval mode restored
    assert "no batch reached 1 BatchNorm layer(s), which keep their previous statistics: ['norm2.repbn.bn']" in \
        capsys.readouterr().out


def test_failure_restores_statistics():
    model = DropModel()
    old = {k: v.clone() for k, v in model.state_dict().items()}
    bad = [dict(inputs=torch.zeros(2, 6, 4)), dict(inputs=torch.zeros(2, 6, 5))]  # 2nd batch: wrong width
    with pytest.raises(RuntimeError):
        recalibrate_bn(model, bad, 2)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, old[key], rtol=0, atol=0, msg=key)
    assert model.norm1.repbn.bn.momentum == 0.1


def test_recalibrate_bn_errors():
    with pytest.raises(ValueError, match='num_iters must be an int >= 1, got 0'):
        recalibrate_bn(DropModel(), loader(), 0)
    with pytest.raises(ValueError, match=r'ToyTokenModel has no BatchNorm layer that training updates.*'
                                         r'norm_cfg = dict\(type="PRepBN"\)'):
        recalibrate_bn(ToyTokenModel(norm=nn.LayerNorm), loader(), 1)


def test_hook_recalibrates_after_the_anneal(tmp_path):
    # Epoch based (4 iterations per epoch, in dataset order): recalibration sees batches 0 and 1.
    hook = dict(type='PRepBNHook', anneal_iters=4, recalibrate_bn_iters=2)
    runner = toy_runner(tmp_path, [hook], max_epochs=2)
    before = copy.deepcopy(runner.model)
    runner.train()
    model = runner.model
    assert model.prepbn_g() == [0.0, 0.0, 0.0]
    bn_names = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
    # The weights are those of training; the statistics those of the final weights over the 2 batches.
    expected = reference_stats(model, list(loader())[:2], bn_names)
    ckpt = torch.load(osp.join(tmp_path, 'bn_recalibrated_iter_8.pth'), map_location='cpu')
    assert ckpt['meta']['bn_recalibration'] == dict(iters=2, layers=3)
    assert ckpt['meta']['iter'] == 8 and ckpt['meta']['prepbn_start_g'] == {f'blocks.{i}.0': 1.0 for i in range(3)}
    for name in bn_names:  # (.cpu(): the Runner puts the model on the GPU where there is one)
        torch.testing.assert_close(ckpt['state_dict'][f'{name}.running_mean'], expected[name][0].cpu())
        torch.testing.assert_close(ckpt['state_dict'][f'{name}.running_var'], expected[name][1].cpu())
        assert int(ckpt['state_dict'][f'{name}.num_batches_tracked']) == 2
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ckpt['state_dict'][key], value.cpu(), rtol=0, atol=0, msg=key)
    assert any(not torch.equal(p, q) for p, q in zip(before.parameters(), model.parameters()))  # it trained
    assert 'recalibrated 3 BatchNorm layers over 2 batches' in runner_log_text(runner)


def test_hook_skips_recalibration_when_anneal_unfinished(tmp_path):
    runner = toy_runner(tmp_path, [dict(type='PRepBNHook', anneal_iters=10, recalibrate_bn_iters=2)], max_iters=3)
    runner.train()
    assert not osp.exists(osp.join(tmp_path, 'bn_recalibrated_iter_3.pth'))
    assert 'BN recalibration skipped because the anneal has not finished' in runner_log_text(runner)


# --------------------------------------------------------------------------- checkpoint / CLI
PVT_MINI = 'configs/mini/mask_rcnn_pvt_t.py'


@pytest.fixture
def pvt_config(mini_coco, tmp_path):
    """The mini PVT-T Mask R-CNN config on small images, dumped to a file (LayerNorm backbone)."""
    cfg = mini_config(PVT_MINI, mini_coco, tmp_path, max_iters=1, img_scale=(128, 96))
    path = str(tmp_path / 'mask_rcnn_pvt_t_small.py')
    cfg.dump(path)
    return path


def test_recalibrate_checkpoint_errors(pvt_config, tmp_path):
    dummy = tmp_path / 'dummy.pth'
    dummy.write_bytes(b'')
    with pytest.raises(FileNotFoundError, match='config file not found: nowhere.py'):
        recalibrate_checkpoint('nowhere.py', str(dummy), 2)
    with pytest.raises(FileNotFoundError, match='checkpoint file not found: nowhere.pth'):
        recalibrate_checkpoint(pvt_config, 'nowhere.pth', 2)
    with pytest.raises(ValueError, match='must be an int >= 1, got 0'):
        recalibrate_checkpoint(pvt_config, str(dummy), 0)
    with pytest.raises(ValueError, match=r'MaskRCNN built from .* has no BatchNorm layer that training updates.*'
                                         r'--cfg-options model.backbone.norm_cfg.type=PRepBN'):
        recalibrate_checkpoint(pvt_config, str(dummy), 2)


@pytest.mark.slow
def test_cli_on_pvt_mask_rcnn(pvt_config, tmp_path):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from slab_mmdet.models.layers import iter_prepbn
    cfg = Config.fromfile(pvt_config)
    cfg.model.backbone.norm_cfg = dict(type='PRepBN')
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    for _, m in iter_prepbn(model):
        m.set_g(0.0)  # a fully annealed model: only the BN branches run
    ckpt = str(tmp_path / 'annealed.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict(note='annealed')), ckpt)
    out = str(tmp_path / 'recalibrated.pth')

    result = run_python(['tools/recalibrate_bn.py', pvt_config, ckpt, '--iters', '2', '--out', out, '--device',
                         'cpu', '--cfg-options', 'model.backbone.norm_cfg.type=PRepBN'])
    assert result.returncode == 0, result.stderr[-3000:]
    num_bn = sum(isinstance(m, _BatchNorm) for m in model.modules())
    assert num_bn == len(list(iter_prepbn(model))) > 0  # one BatchNorm per PRepBN
    assert f'recalibrated {num_bn} BatchNorm layers over 2 batches of the train set; saved {out}' in result.stdout

    saved = torch.load(out, map_location='cpu')
    assert saved['meta']['note'] == 'annealed'
    assert saved['meta']['bn_recalibration'] == dict(iters=2, layers=num_bn, source=ckpt)
    original = model.state_dict()
    assert saved['state_dict'].keys() == original.keys()
    for key, value in original.items():
        if key.endswith(('running_mean', 'running_var')):
            assert not torch.equal(saved['state_dict'][key], value), key  # was 0 / 1, now data statistics
            assert torch.isfinite(saved['state_dict'][key]).all()
        elif key.endswith('num_batches_tracked'):
            assert int(saved['state_dict'][key]) == 2, key
        else:
            torch.testing.assert_close(saved['state_dict'][key], value, rtol=0, atol=0, msg=key)

    bad = run_python(['tools/recalibrate_bn.py', pvt_config, ckpt, '--iters', '0'])
    assert bad.returncode != 0 and 'error: --iters must be >= 1, got 0' in bad.stderr
