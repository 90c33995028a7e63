"""ConversionReport: what a checkpoint conversion did, for people and for the checkpoint's meta."""
from collections import OrderedDict


class ConversionReport:
    """What a conversion did.

    Attributes:
        family (str): 'reference' or 'mmdet'.
        layout (str): The recognised source model, in words.
        backbone_cfg (dict): Config of our backbone that the weights fit.
        g_values (dict): PRepBN name -> g taken from the checkpoint.
        dropped (list[(key, why)]): Source keys deliberately not carried over
            (classification head, buffers derived from the window size).
        unmapped (list[(key, why)]): Source keys with no counterpart in our backbone.
        new_keys (list[str]): Our keys the source has no value for (output norms
            the source model lacks); they keep their initialisation.
        notes (list[str]): Assumptions the weights could not confirm.
        detector (bool): The source was a detector checkpoint; ``kept`` lists the
            top-level modules (neck, heads) carried over unchanged.
    """

    def __init__(self, family, layout, backbone_cfg):
        self.family = family
        self.layout = layout
        self.backbone_cfg = backbone_cfg
        self.g_values = {}
        self.dropped = []
        self.unmapped = []
        self.new_keys = []
        self.notes = []
        self.detector = False
        self.kept = []

    @property
    def g_range(self):
        return (min(self.g_values.values()), max(self.g_values.values())) if self.g_values else None

    def summary(self):
        """A human-readable account: architecture, PRepBN g, dropped/unmapped/new keys."""
        lines = [f'source: {self.layout}' + (' (detector checkpoint)' if self.detector else ''),
                 f'PRepBN layers with g from the checkpoint: {len(self.g_values)}'
                 + (', g in [{:.4g}, {:.4g}]'.format(*self.g_range) if self.g_values else '')]
        if self.kept:
            lines.append(f'kept unchanged: {", ".join(self.kept)}')
        by_reason = OrderedDict()
        for key, why in self.dropped:
            by_reason.setdefault(why, []).append(key)
        for why, keys in by_reason.items():
            shown = ', '.join(keys[:3]) + (f', ... ({len(keys)} keys)' if len(keys) > 3 else '')
            lines.append(f'dropped ({why}): {shown}')
        if self.new_keys:
            modules = sorted({k.split('.')[0] for k in self.new_keys})   # output norms
            lines.append(f'not in the checkpoint, left at initialisation: {", ".join(modules)}')
        lines += [f'could not map {key}: {why}' for key, why in self.unmapped]
        if not self.unmapped:
            lines.append('unmapped keys: none')
        lines += [f'note: {n}' for n in self.notes]
        return '\n'.join(lines)

    def to_meta(self):
        """The report as plain data (safe for ``torch.load(weights_only=True)``)."""
        return dict(family=self.family, layout=self.layout, backbone=self.backbone_cfg, detector=self.detector,
                    kept=list(self.kept), prepbn_layers=len(self.g_values), g_range=self.g_range,
                    dropped=[list(d) for d in self.dropped], unmapped=[list(u) for u in self.unmapped],
                    new_keys=list(self.new_keys), notes=list(self.notes))
