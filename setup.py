"""crowdloss: crowd-detection playground on plain PyTorch (no compiled code)."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _requirements():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


setup(
    name="crowdloss",
    version="0.1.0",
    description="Crowded-scene person detection: LLA, FCOS, ATSS, RetinaNet on plain PyTorch",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["crowdloss", "crowdloss.*"]),
    # torch is deliberately not listed: install the build for your machine first (README).
    install_requires=_requirements(),
    extras_require={
        "dev": ["pytest>=7", "pytest-timeout"],
        "plot": ["matplotlib"],
        "tensorboard": ["tensorboard"],
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],
    },
    entry_points={
        "console_scripts": [
            "pods_train=crowdloss.cli.train:main",
            "pods_test=crowdloss.cli.test:main",
            "pods_demo=crowdloss.cli.demo:main",
        ]
    },
)
