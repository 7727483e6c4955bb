"""The retraining store: manifests (``manifest``), loading for training (``loader``), export (``dataset``)."""
