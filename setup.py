from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="solo-ema",
    version="0.1.0",
    description="Partial (projector-only, per-block) momentum encoders for self-supervised learning",
    long_description=Path("README.md").read_text(encoding="utf-8") if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["solo_ema", "solo_ema.*"]),
    include_package_data=True,
    package_data={"solo_ema.data": ["imagenet100_classes.txt"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "lightning>=2.2,<3",
        "omegaconf>=2.3",
        "tqdm>=4.60",
        "pillow>=9.0",
        "numpy>=1.23",
    ],
    extras_require={
        "dali": ["nvidia-dali-cuda130"],
        "wandb": ["wandb>=0.15"],
        "plot": ["matplotlib>=3.6"],
        "dev": ["pytest>=7.0", "ruff>=0.4", "matplotlib>=3.6", "wandb>=0.15"],
    },
    entry_points={
        "console_scripts": [
            "solo-ema-pretrain=solo_ema.pretrain:main",
            "solo-ema-demo=solo_ema.demo:main",
            "solo-ema-plot=solo_ema.plot:main",
            "solo-ema-report=solo_ema.report:main",
            "solo-ema-linear=solo_ema.linear:main",
            "solo-ema-solo-pretrain=solo_ema.solo_pretrain:main",
        ]
    },
)
