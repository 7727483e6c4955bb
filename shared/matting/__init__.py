"""Background matting: U2-Net salient-object masks, trained in PyTorch and served with ONNX Runtime."""

from pathlib import Path

# The committed models (ours, its int8 copy, their training records); light to import, so the CLI
# names it without loading ONNX Runtime.
MODELS_DIR = Path(__file__).resolve().parent / "models"
# The renderer catalogue every held-out figure is measured on (train's model card, eval, quantize's
# acceptance): never trained on.
RENDERER_HELDOUT_SEED = 9001
