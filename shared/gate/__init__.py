"""The quality gate's pure arithmetic (``checks.py``: IoU, mask checks, colour drift); the stage is
``services/gate``."""
