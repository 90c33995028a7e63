"""The images a benchmark times (slab_mmdet.benchmark.images): the config's test dataset in
order, and a missing dataset named with what to use instead."""
import pytest

from slab_mmdet.benchmark import BenchmarkError, load_config, resolve_images
from slab_mmdet.benchmark.images import list_mini_coco_val
from testing_utils.benchmark_utils import MASK_RCNN, load_benchmark_cli


def test_missing_dataset_names_the_path_and_suggests_images_or_mini(tmp_path, capsys):
    missing_root = str(tmp_path / 'nowhere') + '/'
    with pytest.raises(SystemExit):
        load_benchmark_cli().main([MASK_RCNN, '--cfg-options', f'test_dataloader.dataset.data_root={missing_root}'])
    err = capsys.readouterr().err
    assert missing_root + 'annotations/instances_val.json' in err
    assert '--images DIR' in err and '--mini' in err
    with pytest.raises(BenchmarkError, match=r'mini COCO val split not found: .*nowhere/val.*make_mini_coco'):
        resolve_images(None, 2, mini_root=str(tmp_path / 'nowhere'))

def test_default_images_are_the_configs_test_dataset_in_order(mini_coco):
    cfg = load_config(MASK_RCNN, {'test_dataloader.dataset.data_root': mini_coco + '/'})
    val = list_mini_coco_val(mini_coco)   # the generator names files by image id, in dataset order
    images = resolve_images(cfg, 3, config_name=MASK_RCNN)
    assert images.paths == val[:3] and images.num_unique == 3
    assert images.source == f'test dataset of {MASK_RCNN}'
    reused = resolve_images(cfg, 6, config_name=MASK_RCNN)   # 4 val images: reused in order
    assert reused.paths == val + val[:2] and reused.num_unique == 4
