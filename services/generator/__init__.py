"""The generator: Triton-served generation model and the stage that asks it for variants."""
