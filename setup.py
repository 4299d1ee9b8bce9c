"""commchannels: communication between deep learning models, as PettingZoo envs, trainers and benchmarks."""

from setuptools import find_packages, setup

RL = ["stable-baselines3>=2.3", "supersuit>=3.9"]
TORCHRL = ["torchrl>=0.14"]  # PettingZooWrapper and collectors on our envs (tests/test_torchrl.py)
DOCS = ["mkdocs-material>=9.5", "mkdocstrings[python]>=0.26"]  # the docs site (mkdocs build --strict in CI)
CLUSTER = ["submitit>=1.5", "ray>=2.9"]  # --launcher submitit|ray (benchmarks.launch), imported only when asked for

setup(
    name="commchannels",
    version="0.1.0",
    description="Communication channels between deep learning models: envs, trainers, RL baselines, benchmarks",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author="the commchannels authors",
    license="MIT",
    license_files=["LICENSE"],
    keywords=["emergent communication", "multi-agent", "pettingzoo", "gumbel-softmax", "decentralised learning"],
    classifiers=[
        "Programming Language :: Python :: 3",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    # the project root itself on sys.path (a path-based editable install): a regular package found there wins
    # over a namespace directory of the same name in site-packages (torchrl 0.14 installs one called benchmarks)
    package_dir={"": "."},
    packages=find_packages(include=["envs", "agents", "trainers", "benchmarks"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",  # install torch==2.13.0 first on CPU-only machines (see README)
        "numpy",
        "gymnasium>=1.0",
        "pettingzoo>=1.24",
        "tensorboard",
        "tqdm",
        "matplotlib",
        "pooch",
    ],
    extras_require={
        "rl": RL,
        "torchrl": TORCHRL,
        "vision": ["torchvision"],
        "docs": DOCS,
        "cluster": CLUSTER,
        # the tests train SB3, run torchrl's collector on every env and the launchers on a local Ray and submitit's
        # local executor; CI checks the import contract and the docs
        "dev": ["pytest", "ruff", "import-linter", *RL, *TORCHRL, *DOCS, *CLUSTER],
    },
)
