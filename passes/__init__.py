"""Built-in passes, one module per pass (installed as ``graphc.passes``)."""
