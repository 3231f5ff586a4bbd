"""The exported pipeline as one Stable Diffusion checkpoint (issue 18): tiny SD-compatible
components built offline, written by the export, loaded back by diffusers' own
`StableDiffusionPipeline.from_single_file` with the folder as its config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from safetensors.torch import load_file
from support.tiny_clip import tiny_clip_config
from transformers import CLIPTextModel

from sdlab.config import TrainConfig, VaeConfig
from sdlab.models.pipeline import SINGLE_FILE, export_pipeline
from sdlab.models.single_file import unet_to_ldm, vae_to_ldm
from sdlab.models.text_encoder import load_text_encoder
from sdlab.models.vae import build_vae

# (block_out_channels, layers_per_block, cross-attention per level): two small layouts and the
# shape of SD 1.x's (4 levels x 2 layers, no attention at the deepest level) at tiny width
LAYOUTS = [((16, 32), 1, (True, True)), ((8, 16, 16), 2, (False, True, True)), ((8, 16, 16, 16), 2, (1, 1, 1, 0))]


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


def test_an_sd_compatible_export_writes_a_single_file_that_from_single_file_loads(tmp_path):
    tokenizer, _ = load_text_encoder(None, 77)
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(tiny_clip_config(tokenizer).text_config)
    vae = build_vae(VaeConfig(block_out_channels=[8, 16]), 16)
    unet = tiny_unet((16, 32), 1, (True, True))
    out = tmp_path / "pipeline"
    said = export_pipeline(unet, TrainConfig(), vae, tokenizer, text_encoder, out)
    assert said.startswith(f"written: {SINGLE_FILE}")
    checkpoint = load_file(str(out / SINGLE_FILE))
    assert "model.diffusion_model.input_blocks.0.0.weight" in checkpoint  # the layout other tools read
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in checkpoint

    folder = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None)
    single = StableDiffusionPipeline.from_single_file(
        str(out / SINGLE_FILE), config=str(out), local_files_only=True, safety_checker=None
    )
    images = {}
    for name, pipe in (("folder", folder), ("single", single)):
        pipe.set_progress_bar_config(disable=True)
        images[name] = pipe(
            "a blob", num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np"
        ).images
    assert images["folder"].shape == (1, 16, 16, 3)
    assert np.abs(images["folder"] - images["single"]).max() < 1e-5  # the same model, read from one file
    other = folder("a blob", num_inference_steps=4, generator=torch.Generator().manual_seed(1), output_type="np")
    assert np.abs(other.images - images["single"]).max() > 1e-3  # (a different seed does differ)


def test_the_default_profile_says_why_it_has_no_single_file(tmp_path):
    tokenizer, text_encoder = load_text_encoder(None, 77)  # MiniLM: a BertModel
    unet = tiny_unet((16, 32), 1, (True, True), cross_dim=384)
    out = tmp_path / "pipeline"
    said = export_pipeline(
        unet, TrainConfig(), build_vae(VaeConfig(block_out_channels=[8, 16]), 16), tokenizer, text_encoder, out
    )
    assert said == "not written: the text_encoder is a BertModel; the Stable Diffusion layout needs a CLIPTextModel"
    assert not (out / SINGLE_FILE).exists() and json.loads((out / "model_index.json").read_text())
