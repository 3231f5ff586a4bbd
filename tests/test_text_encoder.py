import torch

from sdlab.config import TrainConfig, UnetConfig, VaeConfig
from sdlab.diffusion import make_noise_scheduler
from sdlab.models.pipeline import build_pipeline
from sdlab.models.text_encoder import encode_prompts, load_text_encoder
from sdlab.models.unet import build_unet
from sdlab.models.vae import build_vae


def test_packaged_minilm_loads_offline_and_pads_to_77():
    tokenizer, model = load_text_encoder(None, 77)
    hidden = encode_prompts(tokenizer, model, ["blobhappy emoji", "a much longer prompt " * 30])
    assert hidden.shape == (2, 77, 384)
    assert model.num_parameters() > 20_000_000  # the real pretrained MiniLM, not a stub


def test_cached_text_states_equal_what_the_pipeline_feeds_the_unet():
    tokenizer, model = load_text_encoder(None, 77)
    unet = build_unet(
        UnetConfig(block_out_channels=[8, 16], attention_head_dim=2, cross_attention_levels=[False, True]), 4, 4, 384
    )
    vae = build_vae(VaeConfig(block_out_channels=[8, 16]), 8)
    pipeline = build_pipeline(unet, vae, tokenizer, model, make_noise_scheduler(TrainConfig()))
    prompts = ["blobsad emoji with a round head", ""]
    with torch.no_grad():
        from_pipeline, _ = pipeline.encode_prompt(prompts, "cpu", 1, do_classifier_free_guidance=False)
    assert torch.allclose(encode_prompts(tokenizer, model, prompts), from_pipeline, atol=1e-6)
