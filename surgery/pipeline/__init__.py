"""The pruning pipeline: train, prune, fine-tune, evaluate, report, from one call.

``surgery.pipeline.run(config)`` (or ``surgery run`` on the command line) returns a
:class:`Result`; the configuration layers and keys are in :mod:`surgery.pipeline.config`.

Example:
    >>> from surgery.pipeline import resolve
    >>> resolve(preset="conservative", env={}).prune.target_flops
    0.7
"""
from surgery.pipeline.config import ConfigError, RunConfig, resolve, to_yaml
from surgery.pipeline.runner import Result, run

__all__ = ["run", "Result", "RunConfig", "resolve", "to_yaml", "ConfigError"]
