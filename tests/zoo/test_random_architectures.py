"""Property: on random architectures, pruning is exact (oracle) and shapes are unchanged."""
import warnings

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from support.oracle import prepared
from support.random_nets import RandomNet, programs
from surgery import testing as oracle
from surgery.metrics import count_params
import surgery


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=programs(max_ops=10), ratio=st.sampled_from([0.25, 0.5, 0.75]))
# found by hypothesis: a shuffle of a 2-channel tensor, view(n, 2, c // 2, h, w), where
# patching the literal 2 alone broke the run-time c // 2
@example(spec=([("conv", 0, 3, 6, 1, 3, "relu"), ("chunk", 1), ("conv", 1, 6, 4, 1, 1, "relu"),
                ("add", 1, 1), ("shuffle", 1, 2), ("add", 1, 1), ("split", 1, [2, 4]),
                ("shuffle", 1, 2), ("shuffle", 8, 2), ("conv", 1, 6, 4, 1, 1, "relu")],
               [3, 6, 3, 3, 4, 6, 6, 6, 2, 4, 6, 2, 4]), ratio=0.5)
# found by hypothesis: a weight tied between a conv on the (untracked) model input and a conv on
# tracked channels; pruning the second's inputs untied (and broke) the first
@example(spec=([("conv", 0, 3, 6, 1, 3, "relu"), ("conv", 1, 6, 6, 6, 3, "relu"), ("slice", 1, 0, 1),
                ("conv", 1, 6, 4, 1, 1, "relu"), ("chunk", 1), ("tie", 6, 0)],
               [3, 6, 6, 1, 4, 3, 3, 6]), ratio=0.5)
def test_random_architecture_prunes_exactly(spec, ratio):
    program, channels = spec
    model = prepared(RandomNet(program, channels))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = surgery.prune(model, x, ratio=ratio)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = surgery.trace(model, x)
    if any(int(ratio * g.size + 1e-9) >= 1 for g in graph.prunable_groups):
        assert count_params(pruned) < count_params(model), program  # channels really went
    assert pruned(x).shape == model(x).shape
    assert pruned.surgery_verification.exact or pruned.surgery_verification.unchecked == ["nothing was removed"]
    assert oracle.max_error(model, pruned, x) < 1e-10, program
