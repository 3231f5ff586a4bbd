"""The exported pipeline as one Stable Diffusion checkpoint (issues 18, 32): the renaming checked
against diffusers' own converter on several layouts; the file written only for an SD 1.x-shaped
pipeline, and read back as a client that has only the file reads it (diffusers'
`from_single_file` without the folder); every other shape refused with the property named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from safetensors.torch import load_file
from support.sd15_hub import sd15_hub_cache, tiny_clip_tokenizer
from transformers import CLIPTextConfig, CLIPTextModel

from sdlab.config import TrainConfig, VaeConfig
from sdlab.diffusion import make_noise_scheduler
from sdlab.models.pipeline import SINGLE_FILE, build_pipeline, export_pipeline
from sdlab.models.single_file import SD1_TEXT, SD1_UNET, SD1_VAE, single_file_obstacle, unet_to_ldm, vae_to_ldm
from sdlab.models.text_encoder import load_text_encoder
from sdlab.models.vae import build_vae
from sdlab.sampling import use_scheduler

# (block_out_channels, layers_per_block, cross-attention per level): two small layouts and the
# shape of SD 1.x's (4 levels x 2 layers, no attention at the deepest level) at tiny width
LAYOUTS = [((16, 32), 1, (True, True)), ((8, 16, 16), 2, (False, True, True)), ((8, 16, 16, 16), 2, (1, 1, 1, 0))]
LAYOUT_2_LEVELS = {
    "block_out_channels": (64, 128),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}


def tiny_unet(channels, layers, attention, cross_dim=32) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        cross_attention_dim=cross_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )


@pytest.mark.parametrize("channels,layers,attention", LAYOUTS)
def test_the_ldm_layout_is_what_diffusers_converts_back_to_the_same_weights(channels, layers, attention):
    unet = tiny_unet(channels, layers, attention)
    state = unet.state_dict()
    back = convert_ldm_unet_checkpoint(unet_to_ldm(state, unet.config), dict(unet.config))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    vae = AutoencoderKL(
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        norm_num_groups=8,
    )
    state = vae.state_dict()
    ldm = vae_to_ldm(state, vae.config)
    assert ldm["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4  # LDM keeps 1x1 convs
    back = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k].reshape(state[k].shape), state[k]) for k in state)


def sd1_parts(unet=None, vae=None, text=None):
    """The components of an SD 1.x-shaped pipeline (~1.07B parameters; on the meta device the
    configs alone), with `unet`/`vae`/`text` config values changed."""
    torch.manual_seed(1)
    blocks = {"down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4}
    return (
        UNet2DConditionModel(**{**SD1_UNET, "sample_size": 8, **(unet or {})}),
        AutoencoderKL(**{**SD1_VAE, **blocks, **(vae or {})}),
        CLIPTextModel(CLIPTextConfig(**{**SD1_TEXT, "projection_dim": 768, **(text or {})})),
    )


def sample(pipe, seed: int = 0) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    use_scheduler(pipe, "dpm_solver_multistep")  # the same sampler on both sides (SD 1.5's config says PNDM)
    generator = torch.Generator().manual_seed(seed)
    return pipe("a blob", height=64, width=64, num_inference_steps=2, generator=generator, output_type="np").images


def test_an_sd1_shaped_export_is_read_right_by_a_client_that_has_only_the_file(tmp_path):
    """`from_single_file` without `config=`: diffusers detects SD 1.x from the keys and builds
    SD 1.5's configs from the hub cache, as ComfyUI builds its own SD15 model: what every
    single-file client sees. It must give the folder's image."""
    tokenizer = tiny_clip_tokenizer(tmp_path / "tokenizer")
    unet, vae, text_encoder = sd1_parts()
    out = tmp_path / "pipeline"
    said = export_pipeline(unet, TrainConfig(), vae, tokenizer, text_encoder, out)
    assert said.startswith(f"written: {SINGLE_FILE}")
    del unet, vae, text_encoder
    checkpoint_keys = set(load_file(str(out / SINGLE_FILE)))
    assert "model.diffusion_model.input_blocks.0.0.weight" in checkpoint_keys  # the layout other tools read
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in checkpoint_keys

    cache = sd15_hub_cache(tmp_path / "hub", tmp_path / "tokenizer")
    single = StableDiffusionPipeline.from_single_file(
        str(out / SINGLE_FILE), cache_dir=str(cache), local_files_only=True, safety_checker=None
    )
    assert single.unet.config.attention_head_dim == 8 and single.vae.config.scaling_factor == 0.18215
    image = sample(single)
    del single
    folder = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None)
    assert image.shape == (1, 64, 64, 3)
    assert np.abs(sample(folder) - image).max() < 1e-4  # the same model, read from one file
    assert np.abs(sample(folder, seed=1) - image).max() > 1e-3  # (a different seed does differ)


# What a single-file client would misread, each in an otherwise SD 1.x-shaped pipeline (meta
# device: the rule reads configs), and the property the rule must name.
MISREAD = {
    "four_heads": (  # loads with no warning and computes otherwise
        dict(unet={"attention_head_dim": 4}),
        "attention_head_dim is 4",
    ),
    "two_level_unet": (dict(unet=LAYOUT_2_LEVELS), "block_out_channels is [64, 128]"),
    "vae_scale": (  # a VAE trained here stores 1/std; clients use 0.18215
        dict(vae={"scaling_factor": 0.31}),
        "vae's scaling_factor is 0.31",
    ),
    "vae_width": (dict(vae={"block_out_channels": (32, 64, 64, 64)}), "vae's block_out_channels"),
    "latent_8": (dict(vae={"latent_channels": 8}, unet={"in_channels": 8, "out_channels": 8}), "in_channels is 8"),
    "clip_b": (dict(text={"hidden_size": 512, "num_attention_heads": 8}), "hidden_size is 512"),
    "v_prediction": (  # sampled as epsilon by every SD 1.x client
        dict(train={"prediction_type": "v_prediction"}),
        "prediction_type is 'v_prediction'",
    ),
    "cosine": (dict(train={"beta_schedule": "squaredcos_cap_v2"}), "beta_schedule is 'squaredcos_cap_v2'"),
}


@pytest.mark.parametrize("case", MISREAD)
def test_the_rule_refuses_what_a_single_file_client_would_misread(case, tmp_path):
    changes, reason = MISREAD[case]
    tokenizer = tiny_clip_tokenizer(tmp_path / "tokenizer")
    with torch.device("meta"):
        sd1, changed = sd1_parts(), sd1_parts(changes.get("unet"), changes.get("vae"), changes.get("text"))
    pipelines = [
        build_pipeline(unet, vae, tokenizer, text_encoder, make_noise_scheduler(TrainConfig(**train)))
        for (unet, vae, text_encoder), train in ((sd1, {}), (changed, changes.get("train", {})))
    ]
    assert single_file_obstacle(pipelines[0]) is None  # SD 1.x throughout: written
    obstacle = single_file_obstacle(pipelines[1])
    assert obstacle is not None and reason in obstacle, obstacle


def test_the_default_profile_says_why_it_has_no_single_file(tmp_path):
    tokenizer, text_encoder = load_text_encoder(None, 77)  # MiniLM: a BertModel
    unet = tiny_unet((16, 32), 1, (True, True), cross_dim=384)
    out = tmp_path / "pipeline"
    said = export_pipeline(
        unet, TrainConfig(), build_vae(VaeConfig(block_out_channels=[8, 16]), 16), tokenizer, text_encoder, out
    )
    assert said == "not written: the text_encoder is a BertModel; the Stable Diffusion layout needs a CLIPTextModel"
    assert not (out / SINGLE_FILE).exists() and json.loads((out / "model_index.json").read_text())
