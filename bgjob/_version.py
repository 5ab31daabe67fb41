"""The version of bgjob: one source for the package metadata, the CLI and the worker directory."""

__version__ = "0.1.0"
