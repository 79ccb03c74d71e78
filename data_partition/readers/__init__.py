"""Readers of real datasets in their standard on-disk layouts (one module per dataset).

Each exposes ``build(data_root, scratch) -> DatasetSplits`` (run once, inside the
array cache's build step) and a cheap ``check_layout(data_root)`` that raises a
one-line :class:`~data_partition.readers.common.LayoutError` naming the expected
layout. They are registered by name in :mod:`data_partition.datasets`.
"""
