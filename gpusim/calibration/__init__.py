"""Fitting and judging the cost model against measurements.

Readers of the harness's files (``measurements``, ``profiles``, ``micro``,
``steady_clocks``, ``gemm_picks``, ``spec_measured``), what a fit searches (``space``),
the fit (``fit``), and the reports of predicted against measured (``validate``,
``spec_validate``). Built on ``step``; only the command line imports it.
"""
