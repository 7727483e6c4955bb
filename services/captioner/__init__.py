"""Captioner stage: reference-photo masks, measured captions and prompts (``stage.py``)."""
