"""A trained pipeline as one checkpoint in the original Stable Diffusion (LDM) layout, the file
AUTOMATIC1111 and ComfyUI load, and diffusers with `StableDiffusionPipeline.from_single_file`.

diffusers ships only the other direction (`loaders.single_file_utils`: LDM -> diffusers); this is
its inverse, in the renaming of the reference script in the diffusers repository
(`scripts/convert_diffusers_to_original_stable_diffusion.py`), generalised from SD 1.x's fixed
4 levels x 2 layers to any level count and `layers_per_block`, as the LDM `UNetModel` allows:
`input_blocks` hold per level `layers_per_block` (resnet, attention) pairs, then a downsampler;
`output_blocks` one more pair per level, the upsampler after the last. Only a CLIP text encoder
(`CLIPTextModel`), a `UNet2DConditionModel` and an `AutoencoderKL` have an LDM layout; anything
else gets `SingleFileUnsupported` with the reason.
"""

from __future__ import annotations

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
    """The pipeline has a component with no Stable Diffusion single-file layout."""


def check_convertible(pipeline) -> None:
    """Raise `SingleFileUnsupported` naming the first component without an LDM layout."""
    kinds = {
        "text_encoder": type(getattr(pipeline, "text_encoder", None)).__name__,
        "denoiser": type(getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)).__name__,
        "vae": type(getattr(pipeline, "vae", None)).__name__,
    }
    if pipeline.scheduler.config.get("prediction_type") == "flow_prediction":
        raise SingleFileUnsupported(
            "the model is trained with flow matching; Stable Diffusion single-file clients sample epsilon/v models"
        )
    wanted = {"text_encoder": "CLIPTextModel", "denoiser": "UNet2DConditionModel", "vae": "AutoencoderKL"}
    for part, name in kinds.items():
        if name != wanted[part]:
            raise SingleFileUnsupported(f"the {part} is a {name}; the Stable Diffusion layout needs a {wanted[part]}")


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
