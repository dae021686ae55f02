"""Sweeps: any grid over step, speculative and serving simulations, run on a
``concurrent.futures`` executor (this process, a local process pool, or Dask), resumable
from a ledger of finished points, with the same rows for any executor and worker count.

Modules: ``params`` (what a grid may vary, per simulation), ``grid`` (grid files ->
points, each with its key and SeedSequence seed), ``evaluate`` (one point: resolve its
inputs, run its simulation; what the workers run), ``store`` (ledger, rows, CSV and
Parquet), ``executors`` (inline, local pool, Dask), ``run`` (``run_sweep``).

```python
from gpusim.sweep import grid_from_dict, local_executor, run_sweep
grid = grid_from_dict({"simulation": "step", "grid": {
    "gpu": ["h100-sxm", "h200"], "model": "llama-3.1-8b", "batch": [1, 8, 64]}}, "notebook")
with local_executor(1) as (executor, workers):
    result = run_sweep(grid, executor, workers)
result.rows[0]["step_ms"]
```
"""

from gpusim.sweep.executors import InlineExecutor, dask_executor, local_executor
from gpusim.sweep.grid import Grid, Point, grid_from_dict, load_grid
from gpusim.sweep.run import SweepResult, run_sweep
from gpusim.sweep.store import Ledger, write_parquet

__all__ = ["Grid", "InlineExecutor", "Ledger", "Point", "SweepResult", "dask_executor",
           "grid_from_dict", "load_grid", "local_executor", "run_sweep", "write_parquet"]
