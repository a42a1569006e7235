"""Reference architectures for examples, tests and benchmarks.

Example:
    >>> import models
    >>> models.available()
    ['resnet20', 'resnet56', 'vgg16_bn']
"""
from surgery.models.registry import MODELS, available, create, register_model
from surgery.models import resnet_cifar, vgg  # noqa: F401  (registration)

__all__ = ["MODELS", "available", "create", "register_model"]
