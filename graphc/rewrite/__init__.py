"""Rewriting machinery that several passes share (affine folding into linear sites).

It sits between the pass manager and the passes: it may use the IR, analyses and the
``Context``/``PassResult`` types, and no pass."""
