"""Install slab-mmdet. Versions are pinned in requirements/stack.lock only; see README."""
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
# Shipped inside the package the way OpenMMLab packages do, so that `mim` finds them.
MIM_FILES = ('configs', 'tools')


def add_mim_extension():
    """Put configs/ and tools/ under slab_mmdet/.mim: symlinks for editable installs, copies otherwise."""
    if any(cmd in sys.argv for cmd in ('develop', 'editable_wheel')):
        mode = 'symlink'
    elif any(cmd in sys.argv for cmd in ('sdist', 'bdist_wheel', 'build')):
        mode = 'copy'
    else:
        return
    mim_dir = osp.join(ROOT, 'slab_mmdet', '.mim')
    os.makedirs(mim_dir, exist_ok=True)
    for name in MIM_FILES:
        src, dst = osp.join(ROOT, name), osp.join(mim_dir, name)
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if mode == 'symlink':
            os.symlink(osp.relpath(src, mim_dir), dst, target_is_directory=True)
        else:
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__'))


def read_version():
    with open(osp.join(ROOT, 'slab_mmdet', 'version.py')) as f:
        scope = {}
        exec(f.read(), scope)
    return scope['__version__']


if __name__ == '__main__':
    add_mim_extension()
    setup(
        name='slab_mmdet',
        version=read_version(),
        description='SLAB backbones (simplified linear attention, PRepBN) and norm fusion for MMDetection 3.x',
        long_description=open(osp.join(ROOT, 'README.md'), encoding='utf-8').read()
        if osp.exists(osp.join(ROOT, 'README.md')) else '',
        long_description_content_type='text/markdown',
        packages=find_packages(include=['slab_mmdet', 'slab_mmdet.*']),
        include_package_data=True,
        package_data={'slab_mmdet': ['.mim/configs/**/*', '.mim/tools/**/*', '.mim/configs/*', '.mim/tools/*']},
        python_requires='>=3.9',
        # Unpinned on purpose: the tested versions are pinned once, in requirements/stack.lock.
        install_requires=['torch', 'torchvision', 'mmcv', 'mmengine', 'mmdet', 'timm', 'pycocotools'],
        zip_safe=False,
    )
