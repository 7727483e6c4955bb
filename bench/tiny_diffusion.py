"""Tiny Stable Diffusion (and SDXL) inpainting pipelines and LoRA adapters, built from config: no downloads.

Every part is the real diffusers / transformers class (9-channel UNet, VAE, CLIP text encoder, a
CLIP BPE tokenizer over a 74-token vocabulary, PNDM scheduler) at toy sizes, with weights drawn
from a fixed torch seed, so the pipeline behaves the same on every run and generates 64 px images
in about a second on a CPU. bench/generation.py and bench/adapters.py measure on them, and the tests
build theirs with the same functions (a bench does not import the test tree).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

TINY_BASE_MODEL = "tiny-sd-inpaint"  # the base-model name tiny adapters declare


def _tiny_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    # Single characters, with and without the end-of-word marker: any lowercase prompt tokenises.
    characters = string.ascii_lowercase + string.digits
    vocab = {c: i for i, c in enumerate(characters)}
    vocab.update({f"{c}</w>": len(characters) + i for i, c in enumerate(characters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def _text_config(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=16,
        layer_norm_eps=1e-5,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_vae(**extra: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        **extra,
    )


def build_tiny_inpaint_pipeline(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny ``StableDiffusionInpaintPipeline`` to ``directory`` (save_pretrained layout)."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = _tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9,  # latents + mask + masked-image latents: an inpainting UNet
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=32,
    )
    vae = _tiny_vae()
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    pipe: Any = StableDiffusionInpaintPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)
    return directory


def build_tiny_sdxl_inpaint_pipeline(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny ``StableDiffusionXLInpaintPipeline``: two text encoders, text-time conditioning."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = _tiny_tokenizer()
    torch.manual_seed(seed)
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # six time ids (sizes and crop, no aesthetic score) + the pooled 32-d text embedding
        projection_class_embeddings_input_dim=6 * time_embed_dim + 32,
        cross_attention_dim=64,  # both text encoders' 32-d states, concatenated
        norm_num_groups=32,
    )
    pipe: Any = StableDiffusionXLInpaintPipeline(
        vae=_tiny_vae(force_upcast=False),  # already float32; no per-call upcasting
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(steps_offset=1),
        requires_aesthetics_score=False,
    )
    pipe.save_pretrained(directory)
    return directory


def make_tiny_lora(model_dir: Path, out_dir: Path, *, seed: int, rank: int = 4) -> Path:
    """Train-free LoRA for the tiny UNet: random (non-zero) A and B, saved like diffusers saves LoRA.

    Returns the ``pytorch_lora_weights.safetensors`` file. Different seeds give different adapters.
    """
    import torch
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", local_files_only=True)
    torch.manual_seed(seed)
    # init_lora_weights=False: B is random too, so the adapter changes the output from the start.
    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,
        )
    )
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionInpaintPipeline.save_lora_weights(out_dir, unet_lora_layers=state)
    return out_dir / "pytorch_lora_weights.safetensors"


def product_photo(size: int = 96, *, seed: int = 0) -> tuple[Any, Any]:
    """A textured 'product' (a noisy disc) on a flat background, and its 0/255 mask."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = (((yy - size * 0.5) ** 2 + (xx - size * 0.45) ** 2) <= (size * 0.3) ** 2).astype(np.uint8) * 255
    photo = np.empty((size, size, 3), dtype=np.uint8)
    photo[...] = (200, 190, 170)
    texture = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    photo[mask == 255] = texture[mask == 255]
    return photo, mask


def model_files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` by relative path (to upload a model folder to a store)."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}
