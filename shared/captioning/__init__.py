"""Captioning: measured attributes (``attributes``), prompts and captions (``prompts``), BLIP (``vlm``)."""
