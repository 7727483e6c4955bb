"""LoRA trainer stage (skuforge run lora-trainer)."""
