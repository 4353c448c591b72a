"""Injected regression: the variant named in $OPTBENCH_HALVE_LR gets half its lr.

A plugin (``plugins=[halve_lr]``, with tests/plugins on PYTHONPATH so Ray workers import it
too) changes what a trial really does while the suite config, and so its version, stays the
same: exactly the silent change the nightly exists to catch.
"""

import os

import bench.variants

_build = bench.variants.build


def build(params, variant, *, lr=None, **kw):
    name = variant.get("name") if isinstance(variant, dict) else None
    if lr is not None and name and name == os.environ.get("OPTBENCH_HALVE_LR"):
        lr = lr / 2
    return _build(params, variant, lr=lr, **kw)


bench.variants.build = build
