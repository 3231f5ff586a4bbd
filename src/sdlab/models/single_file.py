"""A trained pipeline as one checkpoint in the original Stable Diffusion (LDM) layout, the file
AUTOMATIC1111 and ComfyUI load, and diffusers with `StableDiffusionPipeline.from_single_file`.

diffusers ships only the other direction (`loaders.single_file_utils`: LDM -> diffusers); this is
its inverse, in the renaming of the reference script in the diffusers repository
(`scripts/convert_diffusers_to_original_stable_diffusion.py`), generalised from SD 1.x's fixed
4 levels x 2 layers to any level count and `layers_per_block`, as the LDM `UNetModel` allows:
`input_blocks` hold per level `layers_per_block` (resnet, attention) pairs, then a downsampler;
`output_blocks` one more pair per level, the upsampler after the last.

The renaming works for any layout, but a single-file client reads only SD 1.x's right: the file
carries no architecture, so the client recognises "SD 1.x" by its keys and builds SD 1.5's
configs. `single_file_obstacle` is the rule: the file is written only for a pipeline that is SD
1.x-shaped in every property the clients assume (`SD1_*`); anything else gets
`SingleFileUnsupported` naming the first property that rules it out.
"""

from __future__ import annotations

import math

import torch

UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
UNET_TOP = {  # diffusers -> LDM
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET = {"conv_shortcut": "nin_shortcut", "conv_norm_out": "norm_out"}
VAE_ATTENTION = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


class SingleFileUnsupported(ValueError):
    """The pipeline is not one a single-file client would read right."""


# What the single-file clients assume of an SD 1.x checkpoint, which is the only shape this
# export writes. Neither ComfyUI nor diffusers' `from_single_file` (without `config=`) reads the
# architecture from a file: both detect "SD 1.x" from its keys and then build SD 1.5's own
# configs, so any other value here would load (or fail) as SD 1.5 and compute something else.
SD1_UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "attention_head_dim": 8,  # heads per block: the loaders assume 8 (a 4-head UNet loads and computes wrong)
    "num_attention_heads": None,
    "cross_attention_dim": 768,
    "transformer_layers_per_block": 1,
    "use_linear_projection": False,
    "upcast_attention": False,
    "only_cross_attention": False,
    "norm_num_groups": 32,
    "norm_eps": 1e-05,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "time_embedding_type": "positional",
    "resnet_time_scale_shift": "default",
    "class_embed_type": None,
    "addition_embed_type": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
}
SD1_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "scaling_factor": 0.18215,  # ComfyUI scales SD 1.x latents by 0.18215 whatever the VAE was trained with
    "shift_factor": None,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}
SD1_TEXT = {  # CLIP ViT-L/14's text tower, with CLIP's own vocabulary
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
}
SD1_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    # Both clients sample every SD 1.x file as epsilon: ComfyUI reads its `v_pred` marker for SDXL
    # only, diffusers takes SD 1.5's scheduler config, and AUTOMATIC1111 needs a hand-made yaml.
    "prediction_type": "epsilon",
}


def mismatch(part: str, config, wanted: dict) -> str | None:
    """The first `wanted` key where `config` differs, in words; None when it matches."""
    for key, value in wanted.items():
        have = config.get(key, value) if isinstance(config, dict) else getattr(config, key, value)
        have = list(have) if isinstance(have, tuple) else have
        same = (
            math.isclose(have, value, rel_tol=1e-6) if isinstance(value, float) and have is not None else have == value
        )
        if not same:
            return f"the {part}'s {key} is {have!r}; single-file clients read every SD 1.x checkpoint as {value!r}"
    return None


def single_file_obstacle(pipeline) -> str | None:
    """Why a single-file client (ComfyUI, AUTOMATIC1111, `from_single_file` without the folder)
    would misread this pipeline, or None when it is SD 1.x-shaped throughout: the one rule for
    writing `sdlab.safetensors`."""
    if pipeline.scheduler.config.get("prediction_type") == "flow_prediction":
        return "the model is trained with flow matching; Stable Diffusion single-file clients sample epsilon/v models"
    kinds = {
        "text_encoder": type(getattr(pipeline, "text_encoder", None)).__name__,
        "denoiser": type(getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)).__name__,
        "vae": type(getattr(pipeline, "vae", None)).__name__,
    }
    wanted = {"text_encoder": "CLIPTextModel", "denoiser": "UNet2DConditionModel", "vae": "AutoencoderKL"}
    for part, name in kinds.items():
        if name != wanted[part]:
            return f"the {part} is a {name}; the Stable Diffusion layout needs a {wanted[part]}"
    tokenizer = type(pipeline.tokenizer).__name__
    if not tokenizer.startswith("CLIPTokenizer"):
        return f"the tokenizer is a {tokenizer}; single-file clients tokenize with CLIP's"
    return (
        mismatch("unet", pipeline.unet.config, SD1_UNET)
        or mismatch("vae", pipeline.vae.config, SD1_VAE)
        or mismatch("text_encoder", pipeline.text_encoder.config, SD1_TEXT)
        or mismatch("scheduler", pipeline.scheduler.config, SD1_SCHEDULE)
    )


def check_convertible(pipeline) -> None:
    """Raise `SingleFileUnsupported` with `single_file_obstacle`'s reason, if there is one."""
    if reason := single_file_obstacle(pipeline):
        raise SingleFileUnsupported(reason)


def rename(name: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        name = name.replace(old, new)
    return name


def unet_prefixes(config) -> dict[str, str]:
    """diffusers block prefix -> LDM block prefix, for this UNet's level and layer counts."""
    levels, layers = len(config.block_out_channels), config.layers_per_block
    has_attention = [kind.startswith("CrossAttn") for kind in config.up_block_types]
    prefixes = {"mid_block.attentions.0.": "middle_block.1."}
    prefixes.update({f"mid_block.resnets.{j}.": f"middle_block.{2 * j}." for j in range(2)})
    for i in range(levels):
        for j in range(layers):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{(layers + 1) * i + j + 1}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{(layers + 1) * i + j + 1}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(layers + 1) * (i + 1)}.0.op."
        for j in range(layers + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{(layers + 1) * i + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{(layers + 1) * i + j}.1."
        upsampler = 2 if has_attention[i] else 1
        prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{(layers + 1) * i + layers}.{upsampler}."
    return prefixes


def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    prefixes = unet_prefixes(config)
    longest_first = sorted(prefixes, key=len, reverse=True)
    out = {}
    for name, tensor in state.items():
        new = rename(name, UNET_TOP)
        if "resnets" in name:
            new = rename(new, UNET_RESNET)
        block = next((p for p in longest_first if new.startswith(p)), None)
        if block is not None:
            new = prefixes[block] + new[len(block) :]
        out[UNET_PREFIX + new] = tensor
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """LDM's VAE numbers the decoder's levels in reverse and keeps its attention as 1x1 convs."""
    levels, layers = len(config.block_out_channels), config.layers_per_block
    prefixes = {"mid_block.attentions.0.": "mid.attn_1."}
    prefixes.update({f"mid_block.resnets.{j}.": f"mid.block_{j + 1}." for j in range(2)})
    for i in range(levels):
        for j in range(layers):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        for j in range(layers + 1):
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{levels - 1 - i}.block.{j}."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
    longest_first = sorted(prefixes, key=len, reverse=True)
    out = {}
    for name, tensor in state.items():
        new = rename(name, VAE_RESNET)
        for old in longest_first:
            if old in new:
                new = new.replace(old, prefixes[old])
                break
        if "mid.attn_1." in new:
            new = rename(new, VAE_ATTENTION)
            if new.endswith(".weight") and tensor.ndim == 2:  # linear -> 1x1 conv
                tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[VAE_PREFIX + new] = tensor
    return out


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers >= 5.6 flattens CLIPTextModel (no `text_model.`); LDM keeps the HF names under
    `cond_stage_model.transformer.text_model.`."""
    return {CLIP_PREFIX + "text_model." + name.removeprefix("text_model."): t for name, t in state.items()}


def pipeline_to_ldm(pipeline) -> dict[str, torch.Tensor]:
    """Every weight of a CLIP + UNet + AutoencoderKL pipeline, in the LDM single-file layout."""
    check_convertible(pipeline)
    return {
        **unet_to_ldm(pipeline.unet.state_dict(), pipeline.unet.config),
        **vae_to_ldm(pipeline.vae.state_dict(), pipeline.vae.config),
        **clip_to_ldm(pipeline.text_encoder.state_dict()),
    }
