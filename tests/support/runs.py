"""Pipeline configurations for tests: a base dict of sections, overridden section by section."""


def run_config(base: dict, out, **sections) -> dict:
    """``base`` with each of ``sections`` merged into its section (or replacing a top-level
    value), and ``out`` as the run folder."""
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    cfg["out"] = str(out)
    return cfg
