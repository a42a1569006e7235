"""Helpers shared by the tests: the oracle wrappers (``support.oracle``), op models
(``support.op_models``), random architectures (``support.random_nets``) and tiny Hugging
Face configs (``support.hf_models``)."""
