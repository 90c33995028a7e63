"""What a finished training recorded: mmengine's ``scalars.json`` of a work dir, read back."""
import glob
import json
import os.path as osp


def training_scalars(work_dir):
    """The ``vis_data/scalars.json`` rows (train and val, one dict per line) of the newest run
    in ``work_dir`` (mmengine writes one timestamped folder per run); [] when there is none."""
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not files:
        return []
    with open(files[-1]) as f:
        return [json.loads(line) for line in f if line.strip()]


__all__ = ['training_scalars']
