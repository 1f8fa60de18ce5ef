"""motionssl: extract motion signals from videos once, then learn motion-aware video representations.

This package is the command line (`cli.py`, `python -m motionssl`); the layers below it live in their own folders
(README, "Layout")."""


def __getattr__(name: str):
    if name == "__version__":  # from the package metadata, as the stores record it; importing the CLI stays light
        from motionssl.stores import __version__
        return __version__
    raise AttributeError(f"module 'motionssl' has no attribute {name!r}")
