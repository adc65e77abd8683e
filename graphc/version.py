"""The graphc version (one definition; the package root and model metadata read it)."""
__version__ = "0.1.0"
