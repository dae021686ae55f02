"""measurements: steps.csv -> StepData; which statistic stands for a row."""

from __future__ import annotations

import numpy as np
import pytest

from gpusim.calibration.measurements import read_steps
from gpusim.errors import ConfigError

HEADER = "model,mode,batch,ctx,q,launch,median_ms,p10_ms,p90_ms,repeats,kernels\n"


def _write(tmp_path, body: str, header: str = HEADER):
    p = tmp_path / "steps.csv"
    p.write_text(header + body)
    return p


def test_graph_rows_use_the_median_and_eager_rows_the_p10(tmp_path):
    p = _write(tmp_path, "m,decode,1,1024,1,graph,2.0,1.9,2.1,20,\n"
                         "m,decode,1,1024,1,eager,10.0,7.5,14.0,60,\n")
    d = read_steps(p)
    np.testing.assert_allclose(d.measured_s, [2.0e-3, 7.5e-3])
    assert list(d.launch) == ["graph", "eager"]


def test_eager_row_without_p10_column_or_value_falls_back_to_the_median(tmp_path):
    no_col = _write(tmp_path, "m,decode,1,1024,1,eager,10.0\n",
                    header="model,mode,batch,ctx,q,launch,median_ms\n")
    assert read_steps(no_col).measured_s[0] == pytest.approx(10e-3)
    empty = _write(tmp_path, "m,decode,1,1024,1,eager,10.0,,,60,\n")
    assert read_steps(empty).measured_s[0] == pytest.approx(10e-3)


@pytest.mark.parametrize("p10", ["x", "-1", "0", "11.0", "nan"])
def test_bad_eager_p10_is_one_clear_error(tmp_path, p10):
    p = _write(tmp_path, f"m,decode,1,1024,1,eager,10.0,{p10},12.0,60,\n")
    with pytest.raises(ConfigError) as exc:
        read_steps(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}:2: p10_ms: ") and "\n" not in msg


def test_graph_row_p10_is_not_read(tmp_path):
    # a graph row's p10 cell plays no part (even if odd): the median stands for it
    p = _write(tmp_path, "m,decode,1,1024,1,graph,2.0,,2.1,20,\n")
    assert read_steps(p).measured_s[0] == pytest.approx(2e-3)


TREE_HEADER = "model,batch,ctx,nodes,causal_ms,tree_ms\n"


def test_tree_rows_are_graph_steps_of_mode_tree(tmp_path):
    from gpusim.calibration.measurements import read_step_dir, read_tree_steps
    (tmp_path / "tree.csv").write_text(TREE_HEADER + "m,4,1024,16,9.5,10.0\n")
    d = read_tree_steps(tmp_path / "tree.csv")
    assert list(d.mode) == ["tree"] and list(d.launch) == ["graph"]
    assert (d.batch[0], d.ctx[0], d.q[0], d.measured_s[0]) == (4, 1024, 16, 0.010)
    steps = _write(tmp_path, "m,decode,1,512,1,graph,2.0,1.9,2.1,20,\n")
    both = read_step_dir(steps)
    assert list(both.mode) == ["decode", "tree"] and len(both) == 2
    assert list(read_step_dir(_write(tmp_path / "..", "m,decode,1,512,1,graph,2,1,3,9,\n")
                              ).mode) == ["decode"]


@pytest.mark.parametrize(("body", "field"), [
    ("m,4,1024,x,9.5,10.0\n", "nodes"),
    ("m,4,1024,16,9.5,0\n", "tree_ms"),
])
def test_bad_tree_row_is_one_clear_error(tmp_path, body, field):
    from gpusim.calibration.measurements import read_tree_steps
    (tmp_path / "tree.csv").write_text(TREE_HEADER + body)
    with pytest.raises(ConfigError, match=f"tree.csv:2: {field}: "):
        read_tree_steps(tmp_path / "tree.csv")
