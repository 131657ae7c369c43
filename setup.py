"""Only what pyproject.toml cannot say: the model registry, models.toml, lives at the top of the
repository beside pyproject.toml and ships inside the `engine.hub` package, where it is read."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib, "engine", "hub", "models.toml")
        target.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file("models.toml", str(target))


setup(cmdclass={"build_py": BuildPy})
