from setuptools import setup

setup(
    name="torch-surgery",
    version="0.1.0",
    description="Structured pruning for PyTorch that physically removes channels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=["surgery", "surgery.rules", "surgery.criteria", "surgery.models", "surgery.pipeline", "criteria", "models"],
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
    ],
    extras_require={"test": ["pytest", "hypothesis", "timm"]},
    entry_points={"console_scripts": ["surgery=surgery.cli:main"]},
)
