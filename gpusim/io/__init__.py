"""The edge where text enters: YAML and JSON files and command-line syntax -> records.

``loader`` (GPUs, models, stacks by name or path; Hugging Face config.json),
``calibrations`` (calibration files, keyed by GPU and stack), ``scenario`` (serving
scenarios and their options, traces, drafts), ``trace``, ``acceptance``, ``overhead``,
``yamlfile`` (line numbers for every key), ``schemas``. Every bad input is one
ConfigError naming file, line and field. The model layers never import this package.
"""
