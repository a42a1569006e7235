"""Reference architectures for examples, tests and benchmarks.

Example:
    >>> import models
    >>> models.available()
    ['digits_cnn', 'mobilenetv2_cifar', 'resnet110', 'resnet20', 'resnet32', 'resnet44', 'resnet56', 'vgg11_bn', 'vgg13_bn', 'vgg16_bn', 'vgg19_bn']
"""
from surgery.models.registry import MODELS, available, create, register_model
from surgery.models import digits, mobilenet_cifar, resnet_cifar, vgg

FAMILIES = (digits, mobilenet_cifar, resnet_cifar, vgg)  # importing them registers the models

__all__ = ["MODELS", "available", "create", "register_model"]
