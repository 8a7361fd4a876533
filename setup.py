"""Package for pip and for Dataflow workers (--setup_file ./setup.py).

Dependencies come from requirements.txt so the pins live in one place."""
import os

import setuptools

_HERE = os.path.dirname(os.path.abspath(__file__))


def _requirements():
    with open(os.path.join(_HERE, "requirements.txt"), encoding="utf-8") as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [line for line in lines if line and not line.startswith("-")]


setuptools.setup(
    name="claude-beam-bulk",
    version="0.1.0",
    description="Apache Beam pipeline that runs very large volumes of records through Claude "
                "at the lowest cost the API allows.",
    packages=setuptools.find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*",
                                               "emulator", "emulator.*"]),
    package_data={"transforms": ["data/*.yaml"], "transforms.api.ratelimit": ["*.lua"]},
    python_requires=">=3.10",
    install_requires=_requirements(),
)
