"""The installed version of torch-surgery (one place; setup.py and the CLI read it)."""
__version__ = "0.1.0"
