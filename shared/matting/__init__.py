"""Background matting: U2-Net salient-object masks, trained in PyTorch and served with ONNX Runtime."""
