"""Does a model fit on one GPU? The check ``gpusim predict`` makes before predicting.

Only the weights are counted: a step's time is meaningless for a model whose weights
alone exceed the GPU's HBM (tensor parallelism is not modelled yet). KV cache and
runtime reserve are the serving simulator's business (``gpusim.serving.kv_cache``).
"""

from __future__ import annotations

from collections.abc import Callable

from gpusim.errors import ConfigError, bad
from gpusim.specs import GpuSpec, ModelSpec


def check_fits(model: ModelSpec, gpu: GpuSpec, source: str = "--model",
               line: int | None = None) -> None:
    """Raise ConfigError (at ``source``/``line``) if ``model``'s weights exceed
    ``gpu``'s HBM capacity; the message gives both numbers."""
    weights = float(model.weight_bytes)
    capacity = float(gpu.hbm_capacity_bytes)
    if weights > capacity:
        raise bad(source, f"{model.name} does not fit on {gpu.name}: weights "
                  f"{weights / 1e9:.2f} GB ({weights:.0f} bytes, {model.param_count:,} "
                  f"params in {model.torch_dtype}) exceed {capacity / 1e9:.2f} GB HBM "
                  f"({capacity:.0f} bytes); multi-GPU (tp > 1) is not modelled yet",
                  line=line)


def fitting_model_loader(gpu: GpuSpec, load: Callable[[str], ModelSpec]
                         ) -> Callable[[str], ModelSpec]:
    """A model resolver for ``rows.predict_rows``: ``load(name)``, then
    ``check_fits``. Its errors carry no location of their own where the row's line
    says it all (an unknown name, a model too large), so the row's error reads
    ``rows.csv:3: model: ...``; errors inside a model file keep that file's line."""

    def resolve(name: str) -> ModelSpec:
        try:
            model = load(name)
        except ConfigError as exc:
            if exc.source.startswith("--"):  # "--model: unknown model ...": the row says
                raise ConfigError("", exc.reason, exc.field, exc.line, exc.value,
                                  exc.has_value) from None
            raise
        check_fits(model, gpu, source="")
        return model

    return resolve
