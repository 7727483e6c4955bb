"""The ``skuforge`` command (``main.py``) and the commands that belong to no one service.

``python -m skuforge_cli ARGS`` is the same as ``skuforge ARGS``.
"""
