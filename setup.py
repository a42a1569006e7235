import re

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "(.+)"', open("surgery/core/version.py", encoding="utf-8").read()).group(1)

setup(
    name="torch-surgery",
    version=VERSION,
    description="Structured pruning for PyTorch that physically removes channels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["surgery", "surgery.*", "criteria", "models"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "numpy",
        "scikit-learn",
        "fvcore",
        "tqdm",
        "threadpoolctl",
        "pyyaml",
        "omegaconf",
    ],
    extras_require={"report": ["matplotlib"], "hf": ["transformers"], "lora": ["transformers", "peft"],
                    "test": ["pytest", "hypothesis", "timm", "matplotlib", "transformers", "pypdfium2", "peft",
                             "ultralytics", "onnx", "onnxruntime", "onnxscript"]},
    entry_points={"console_scripts": ["surgery=surgery.cli:main"]},
)
