"""The package version, in one place: ``audiossl.__version__``, ``audiossl --version``, checkpoints and exports."""

__version__ = "0.1.0"
