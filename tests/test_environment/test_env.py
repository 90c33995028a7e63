"""The environment: pinned stack, compiled mmcv ops, registrations, mim layout."""
import ast
import importlib.util
import json
import os
import os.path as osp
import sys

import pytest
import torch
import torchvision
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from testing_utils.helpers import REPO_ROOT, run_python


LOCK_FILE = osp.join(REPO_ROOT, 'requirements', 'stack.lock')


def read_lock():
    """{canonical name: Requirement} of requirements/stack.lock; fails on a bad or repeated line."""
    pins = {}
    with open(LOCK_FILE) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            try:
                req = Requirement(line)
            except InvalidRequirement as e:
                pytest.fail(f'stack.lock:{lineno}: {line!r} is not a valid requirement ({e})')
            assert str(req.specifier), f'stack.lock:{lineno}: {line!r} has no version specifier'
            name = canonicalize_name(req.name)
            assert name not in pins, f'stack.lock:{lineno}: {req.name} is pinned twice'
            pins[name] = req
    return pins


def setup_keyword(name):
    """The literal value of keyword `name` in setup.py's setup(...) call."""
    with open(osp.join(REPO_ROOT, 'setup.py')) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'setup':
            for kw in node.keywords:
                if kw.arg == name:
                    return ast.literal_eval(kw.value)
    pytest.fail(f'setup.py: setup() has no {name}=')


# ---------------------------------------------------------------------------- the pinned stack

def test_lock_file_pins_each_package_once_with_a_version():
    pins = read_lock()
    # The stack the README promises, each with an exact pin.
    for name in ('torch', 'torchvision', 'mmcv', 'mmengine', 'mmdet', 'timm', 'pycocotools', 'openmim'):
        spec = str(pins[name].specifier)
        assert spec.startswith(('==', '===')), f'{name} is not pinned exactly: {spec}'


def test_install_requires_carry_no_versions():
    """Versions live in stack.lock only: setup.py names its dependencies without versions."""
    pins = read_lock()
    for line in setup_keyword('install_requires'):
        req = Requirement(line)
        assert not str(req.specifier) and req.url is None, f'setup.py pins {line!r}; pin it in stack.lock'
        assert canonicalize_name(req.name) in pins, f'setup.py needs {req.name}, which stack.lock does not pin'


def test_pyproject_build_requirements_agree_with_the_lock():
    """pyproject.toml's build-system needs its own setuptools bound (for isolated builds);
    it must be the lock's, so that the two cannot drift apart."""
    tomllib = pytest.importorskip('tomllib', reason='tomllib needs Python >= 3.11')
    with open(osp.join(REPO_ROOT, 'pyproject.toml'), 'rb') as f:
        build_requires = tomllib.load(f)['build-system']['requires']
    pins = read_lock()
    for line in build_requires:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if str(req.specifier):
            assert name in pins and req.specifier == pins[name].specifier, \
                f'pyproject.toml requires {line!r} but stack.lock says {pins.get(name)}'


def test_installed_versions_match_the_lock():
    """The venv is what the lock describes (`make setup` rebuilds it when the lock changes)."""
    from importlib.metadata import PackageNotFoundError, version
    mismatched = {}
    for name, req in read_lock().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed is None or not req.specifier.contains(installed, prereleases=True):
            mismatched[name] = (str(req.specifier), installed)
    assert not mismatched, f'installed versions differ from stack.lock (spec, installed): {mismatched}'


# ---------------------------------------------------------------------------- mmcv ops

def test_check_env_reports_compiled_ops():
    proc = run_python([osp.join('tools', 'check_env.py')], timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'ops compiled' in proc.stdout
    import mmcv
    import mmdet
    import mmengine
    for name, module in (('torch', torch), ('mmcv', mmcv), ('mmengine', mmengine), ('mmdet', mmdet)):
        assert f'{name} {module.__version__}' in proc.stdout, proc.stdout


def test_mmcv_nms_known_values_and_agrees_with_torchvision():
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.], [0., 0., 10., 4.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    # IoU(box0, box1) = 81 / 119 = 0.68 > 0.5: box1 is suppressed; box3 (IoU 40 / 100 with
    # box0) and the far box2 survive.
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2, 3]
    torch.testing.assert_close(dets, torch.cat([boxes[keep], scores[keep, None]], 1))

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=g) * 30], 1)
    scores = torch.rand(200, generator=g)
    _, keep = nms(boxes, scores, iou_threshold=0.3)
    assert keep.tolist() == torchvision.ops.nms(boxes, scores, 0.3).tolist()


def test_mmcv_roi_align_known_values_and_agrees_with_torchvision():
    from mmcv.ops import roi_align
    feat = torch.arange(16.).view(1, 1, 4, 4)   # feat[y, x] = 4y + x
    # aligned=True shifts the RoI by half a pixel: (0, 0)-(3, 3) covers pixel centres 0..2,
    # sampled (sampling_ratio=0: adaptive, 3 per axis) at 0, 1, 2; the mean of 4y + x is 5.
    out = roi_align(feat, torch.tensor([[0., 0., 0., 3., 3.]]), (1, 1), 1.0, 0, 'avg', True)
    torch.testing.assert_close(out, torch.tensor([[[[5.]]]]))

    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 3, 16, 20, generator=g)
    xy = torch.rand(10, 2, generator=g) * 12
    batch_index = torch.randint(0, 2, (10, 1), generator=g).float()
    rois = torch.cat([batch_index, xy, xy + 1 + torch.rand(10, 2, generator=g) * 6], 1)
    ours = roi_align(feat, rois, (7, 7), 0.5, 2, 'avg', True)
    reference = torchvision.ops.roi_align(feat, rois, (7, 7), 0.5, 2, aligned=True)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- registrations

def test_import_registers_modules():
    """`import slab_mmdet` (what custom_imports does) is what registers the plugin's modules:
    checked in a fresh interpreter, before and after the import."""
    code = '''
import json
import mmengine.registry as root
import mmdet.registry as det
def seen():
    return dict(PRepBN=root.MODELS.get('PRepBN') is not None, RepBN=root.MODELS.get('RepBN') is not None,
                MiniCocoDataset='MiniCocoDataset' in det.DATASETS.module_dict)
before = seen()
import slab_mmdet
print(json.dumps(dict(before=before, after=seen())))
'''
    proc = run_python(['-c', code], timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['before'] == dict(PRepBN=False, RepBN=False, MiniCocoDataset=False)
    assert result['after'] == dict(PRepBN=True, RepBN=True, MiniCocoDataset=True)


def test_norms_build_through_mmcv_and_mmdet_scope():
    import mmengine.registry
    from mmcv.cnn import build_norm_layer
    from mmdet.registry import DATASETS, MODELS

    import slab_mmdet
    from slab_mmdet.datasets import MiniCocoDataset
    from slab_mmdet.models.layers import PRepBN, RepBN

    assert mmengine.registry.MODELS.get('PRepBN') is PRepBN
    assert mmengine.registry.MODELS.get('RepBN') is RepBN
    assert MODELS.get('PRepBN') is PRepBN       # mmdet-scoped lookups reach the root registry
    assert DATASETS.get('MiniCocoDataset') is MiniCocoDataset
    assert slab_mmdet.__version__

    name, layer = build_norm_layer(dict(type='PRepBN'), 8)
    assert name == 'prepbn' and isinstance(layer, PRepBN)
    assert layer.ln.normalized_shape == (8,) and layer.repbn.bn.num_features == 8
    # g starts at 1: a fresh PRepBN is its LayerNorm.
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(layer(x), layer.ln(x))
    name, layer = build_norm_layer(dict(type='RepBN'), 8)
    assert name == 'repbn' and isinstance(layer, RepBN)


# ---------------------------------------------------------------------------- mim layout

def installed_package_dir():
    """Where the venv's slab_mmdet lives as mim sees it (isolated from this checkout's sys.path)."""
    code = 'from mim.utils import get_installed_path; print(get_installed_path("slab_mmdet"))'
    proc = run_python(['-I', '-W', 'ignore', '-c', code], timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_installed_mim_folders_are_this_checkouts():
    """After `make setup`, mim finds slab_mmdet's configs and tools: .mim links to this repo."""
    pkg_dir = installed_package_dir()
    installed_from = osp.dirname(osp.realpath(pkg_dir))
    if installed_from != osp.realpath(REPO_ROOT):
        pytest.skip(f'slab_mmdet is installed from {installed_from}, not from this checkout '
                    f'({REPO_ROOT}); run `make setup` here to install it from this checkout')
    for name in ('configs', 'tools'):
        path = osp.join(pkg_dir, '.mim', name)
        assert osp.isdir(path), f'{path} is missing; run `make setup`'
        assert osp.realpath(path) == osp.realpath(osp.join(REPO_ROOT, name))
    assert osp.isfile(osp.join(pkg_dir, '.mim', 'tools', 'train.py'))      # what `mim train` runs
    assert osp.isfile(osp.join(pkg_dir, '.mim', 'tools', 'test.py'))       # what `mim test` runs
    assert osp.isfile(osp.join(pkg_dir, '.mim', 'configs', 'mini', 'mask_rcnn_pvt_t.py'))


@pytest.fixture
def setup_module_in(tmp_path, monkeypatch):
    """setup.py loaded as a module, with its ROOT moved to a small fake repo in tmp_path."""
    for folder, files in (('configs', ('a.py', 'sub/b.py')), ('tools', ('train.py', '__pycache__/x.pyc'))):
        for f in files:
            path = tmp_path / folder / f
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f'# {folder}/{f}\n')
    (tmp_path / 'slab_mmdet').mkdir()
    spec = importlib.util.spec_from_file_location('slab_setup', osp.join(REPO_ROOT, 'setup.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # setup() itself only runs under __main__
    monkeypatch.setattr(module, 'ROOT', str(tmp_path))
    return module


def test_setup_links_mim_folders_for_editable_installs(setup_module_in, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['setup.py', 'develop'])
    setup_module_in.add_mim_extension()
    for name in ('configs', 'tools'):
        link = tmp_path / 'slab_mmdet' / '.mim' / name
        assert link.is_symlink()
        assert not osp.isabs(os.readlink(link)), 'relative, so that the checkout can move'
        assert osp.realpath(link) == str(tmp_path / name)
    assert (tmp_path / 'slab_mmdet' / '.mim' / 'configs' / 'sub' / 'b.py').read_text() == '# configs/sub/b.py\n'


def test_setup_copies_mim_folders_for_wheels(setup_module_in, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['setup.py', 'develop'])
    setup_module_in.add_mim_extension()          # a link left by an earlier editable install...
    monkeypatch.setattr(sys, 'argv', ['setup.py', 'bdist_wheel'])
    setup_module_in.add_mim_extension()          # ...is replaced by a copy, not written through
    mim = tmp_path / 'slab_mmdet' / '.mim'
    assert not (mim / 'configs').is_symlink() and (mim / 'configs' / 'sub' / 'b.py').is_file()
    assert (mim / 'tools' / 'train.py').read_text() == '# tools/train.py\n'
    assert not (mim / 'tools' / '__pycache__').exists()
    assert (tmp_path / 'configs' / 'a.py').is_file() and (tmp_path / 'tools' / '__pycache__').is_dir()
