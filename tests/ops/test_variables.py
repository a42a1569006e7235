"""The channel-variable table: unifications recorded in bulk give the roots a plain union-find
(union by smaller root) gives, whatever the order of unify, find and new calls."""
import numpy as np
from hypothesis import given, settings, strategies as st

from surgery.ops.variables import VarTable

steps = st.lists(st.one_of(
    st.tuples(st.just("unify"), st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 10 ** 6)),
                                         min_size=1, max_size=6)),
    st.tuples(st.just("find"), st.integers(0, 10 ** 6)),
    st.tuples(st.just("new"), st.integers(1, 4))), max_size=40)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(1, 50), steps)
def test_roots_equal_a_plain_union_find(n, program):
    table, parent = VarTable(), list(range(n))
    table.new(n)

    def root(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for op, arg in program:
        if op == "new":
            parent.extend(table.new(arg).tolist())
        elif op == "find":
            v = arg % len(parent)
            assert table.find(v) == root(v)
        else:
            a = np.array([x % len(parent) for x, _ in arg])
            b = np.array([y % len(parent) for _, y in arg])
            table.unify(a, b)
            for x, y in zip(a.tolist(), b.tolist()):
                rx, ry = root(x), root(y)
                if rx != ry:
                    parent[max(rx, ry)] = min(rx, ry)
    assert table.roots().tolist() == [root(x) for x in range(len(parent))]
