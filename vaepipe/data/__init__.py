"""Data, one module per concern: ``catalog`` (which datasets, their files and checksums),
``formats`` (reading IDX and CIFAR-10 files), ``sources`` (mirror, standard place, download,
verification), ``split`` (the seeded split and its manifest), ``arrays`` (the split files).

Nothing is imported here, so a stage that imports one module loads (and depends on) only that
module and what it imports.
"""
