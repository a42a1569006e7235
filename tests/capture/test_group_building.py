"""Group building: units that touch the same slots form one group. The vectorised grouping
(key sums checked exactly) agrees with grouping by the sets themselves."""
from collections import defaultdict

import numpy as np
import pytest
import torch
import torchvision

from surgery.capture.front import capture
from surgery.groups.analysis import analyse
from surgery.groups.graph import _exact, build_groups
from surgery.groups.ties import couple_shared_tensors


def _by_sets(ctx) -> list:
    """The definition, unit by unit: (sorted slot indices, frozen) -> sorted units."""
    roots = ctx.vars.roots()
    frozen = ctx.vars.frozen_roots(roots)
    touching = defaultdict(set)
    for si, slot in enumerate(ctx.slots.values()):
        for u in np.unique(roots[slot.vars]).tolist():
            touching[u].add(si)
    groups = defaultdict(list)
    for u, sl in touching.items():
        groups[(tuple(sorted(sl)), u in frozen)].append(u)
    return sorted((sig, frozen_, sorted(units)) for (sig, frozen_), units in groups.items())


@pytest.mark.parametrize("name", ["densenet121", "shufflenet_v2_x0_5", "efficientnet_b0", "vit_b_32"])
def test_groups_are_the_units_that_touch_the_same_slots(name):
    kw = {"image_size": 64} if name.startswith("vit") else {}
    gm, _ = capture(torchvision.models.get_model(name, **kw).eval(), torch.randn(1, 3, 64, 64))
    ctx = analyse(gm, "heads")
    couple_shared_tensors(ctx, gm)
    groups, _ = build_groups(ctx)
    slot_index = {(s.name, s.role): i for i, s in enumerate(ctx.slots.values())}
    got = sorted((tuple(slot_index[(m.name, m.role)] for m in g.members), not g.prunable, g.units.tolist())
                 for g in groups)
    assert got == _by_sets(ctx)
    assert [g.index for g in groups] == list(range(len(groups)))


def test_a_label_that_joins_units_with_different_slots_is_caught():
    slot_of = np.array([0, 1, 0, 2])  # unit 0 touches slots {0, 1}, unit 1 touches {0, 2}
    first, counts = np.array([0, 2]), np.array([2, 2])
    assert not _exact(slot_of, first, counts, np.array([0, 0]))  # what a key-sum collision would give
    assert _exact(slot_of, first, counts, np.array([0, 1]))


def test_the_exact_fallback_gives_the_same_groups(monkeypatch):
    gm, _ = capture(torchvision.models.get_model("shufflenet_v2_x0_5").eval(), torch.randn(1, 3, 64, 64))
    ctx = analyse(gm, "dims")
    fast = [(g.units.tolist(), g.prunable, [m.name for m in g.members]) for g in build_groups(ctx)[0]]
    monkeypatch.setattr("surgery.groups.graph._exact", lambda *a: False)  # as on a key-sum collision
    assert [(g.units.tolist(), g.prunable, [m.name for m in g.members]) for g in build_groups(ctx)[0]] == fast
