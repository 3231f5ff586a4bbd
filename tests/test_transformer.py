"""The Transformer denoiser (train.denoiser: transformer): a PixArt-style DiT trained by the
same loop, exported as a PixArtAlphaPipeline that plain diffusers loads and samples."""

import json

import pytest
import torch
from latent_fixtures import LossRecorder, write_latents
from pydantic import ValidationError

from sdlab.cli import size_rules
from sdlab.config import ConfigError, TrainConfig, TransformerConfig, VaeConfig
from sdlab.diffusion import make_noise_scheduler
from sdlab.evaluate import generate, heldout_loss
from sdlab.models.denoiser import make_denoiser, select_trainable, zero_init_output
from sdlab.models.pipeline import build_pipeline, denoiser_of, load_pipeline, save_pipeline
from sdlab.models.text_encoder import encode_prompts, load_text_encoder, tokenize
from sdlab.models.transformer import PixArtDenoiser
from sdlab.models.vae import build_vae
from sdlab.stream import LatentStream, rank_parts
from sdlab.train import Conditioning, make_batch, train_denoiser

TINY = TransformerConfig(num_layers=2, num_attention_heads=2, attention_head_dim=8)
CFG = TrainConfig(
    denoiser="transformer",
    transformer=TINY,
    max_steps=120,
    batch_size=4,
    warmup_steps=2,
    checkpoint_every_steps=120,
    log_every_steps=20,
    shuffle_shards=2,
    lr=3e-3,
)
PROMPTS = ["blobhappy emoji with a round head, dot eyes, smiling mouth", "blobsad emoji with a tall head"]


@pytest.fixture(scope="module")
def text():
    return load_text_encoder(None, 77)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, text):
    tokenizer, encoder = text
    model = make_denoiser(CFG, 4, 4, 384)
    path = tmp_path_factory.mktemp("pixart") / "pipeline"
    save_pipeline(
        build_pipeline(
            model, build_vae(VaeConfig(block_out_channels=[8, 16]), 8), tokenizer, encoder, make_noise_scheduler(CFG)
        ),
        path,
    )
    return path


def test_scratch_weights_come_from_the_seed_and_the_shape_is_checked():
    a, b = make_denoiser(CFG, 4, 4, 384), make_denoiser(CFG, 4, 4, 384)
    c = make_denoiser(CFG.model_copy(update={"seed": 1}), 4, 4, 384)
    assert isinstance(a, PixArtDenoiser)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    with pytest.raises(ConfigError, match="train.transformer.patch_size: 3 does not divide the 4x4 latents"):
        make_denoiser(CFG.model_copy(update={"transformer": TINY.model_copy(update={"patch_size": 3})}), 4, 4, 384)


def test_lora_is_refused_for_the_transformer_and_zero_init_zeroes_its_output():
    with pytest.raises(ValidationError, match="lora needs denoiser: unet"):
        TrainConfig(denoiser="transformer", init="pretrained", pretrained="x", trainable="lora")
    model = make_denoiser(CFG, 4, 4, 384)
    zero_init_output(model)
    out = model(torch.randn(2, 4, 4, 4), torch.tensor([10, 500]), encoder_hidden_states=torch.randn(2, 5, 384)).sample
    assert out.abs().max() == 0
    select_trainable(model, "cross_attention", 4)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".attn2." in n for n in trained)


def test_stored_states_are_what_the_pixart_pipeline_computes(pipeline_dir, text):
    """Training reads masked states: exactly PixArt's encode_prompt, at any padding length."""
    tokenizer, encoder = text
    stored = encode_prompts(tokenizer, encoder, PROMPTS, masked=True)
    _, mask = tokenize(tokenizer, PROMPTS)
    pipeline = load_pipeline(pipeline_dir)
    for length in (77, 120):  # 120: PixArt's default max_sequence_length
        embeds, pipe_mask, _, _ = pipeline.encode_prompt(
            PROMPTS, do_classifier_free_guidance=False, max_sequence_length=length
        )
        real = mask.bool()
        assert torch.equal(pipe_mask[:, :77], mask)
        assert torch.allclose(embeds[:, :77][real], stored[real], atol=1e-5)
    unmasked = encode_prompts(tokenizer, encoder, PROMPTS)  # what the UNet reads is another thing
    assert not torch.allclose(unmasked[mask.bool()], stored[mask.bool()], atol=1e-3)


def test_exported_folder_is_a_pixart_pipeline_that_diffusers_loads_and_samples(pipeline_dir):
    from diffusers import DiffusionPipeline, PixArtAlphaPipeline, PixArtTransformer2DModel

    index = json.loads((pipeline_dir / "model_index.json").read_text())
    assert index["_class_name"] == "PixArtAlphaPipeline" and index["transformer"][1] == "PixArtTransformer2DModel"
    plain = DiffusionPipeline.from_pretrained(str(pipeline_dir))
    assert isinstance(plain, PixArtAlphaPipeline) and type(plain.transformer) is PixArtTransformer2DModel
    out = plain(PROMPTS[0], num_inference_steps=2, use_resolution_binning=False, output_type="np").images
    assert out.shape == (1, 8, 8, 3)  # 4x4 latents, a VAE that halves once
    ours = load_pipeline(pipeline_dir)
    a = generate(ours, PROMPTS, [0, 1], steps=3, guidance=4.0, batch_size=2, progress=False)
    b = generate(ours, PROMPTS, [0, 1], steps=3, guidance=4.0, batch_size=1, progress=False)
    assert a.shape == (2, 8, 8, 3) and (a == b).all()  # a seed fixes its image, whatever the batch
    multiple, trained = size_rules(pipeline_dir)  # what `sdlab generate --height/--width` accepts
    assert (multiple, trained) == (2 * ours.transformer.config.patch_size, 8)
    tall = generate(
        ours, PROMPTS[:1], [0], steps=2, guidance=4.0, batch_size=1, progress=False, height=2 * trained, width=trained
    )
    assert tall.shape == (1, 16, 8, 3)


def test_heldout_loss_of_the_loaded_pipeline_is_the_trained_models(pipeline_dir, text):
    """denoiser_of(pipeline) is the same function as the model that was trained."""
    tokenizer, encoder = text
    model = make_denoiser(CFG, 4, 4, 384).eval()
    hidden = encode_prompts(tokenizer, encoder, PROMPTS, masked=True)
    _, mask = tokenize(tokenizer, PROMPTS)
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    scheduler = make_noise_scheduler(CFG)
    trained = heldout_loss(model, scheduler, latents, hidden=hidden, timesteps=[100, 700], seed=0, mask=mask)
    loaded = heldout_loss(
        denoiser_of(load_pipeline(pipeline_dir)),
        scheduler,
        latents,
        hidden=hidden,
        timesteps=[100, 700],
        seed=0,
        mask=mask,
    )
    assert trained == pytest.approx(loaded, rel=1e-5)
    unmasked = heldout_loss(model, scheduler, latents, hidden=hidden, timesteps=[100, 700], seed=0)
    assert unmasked != pytest.approx(trained, rel=1e-4)  # the mask reaches the model


def test_the_same_loop_trains_it_and_caption_dropout_swaps_the_mask_too(tmp_path):
    root = tmp_path / "latents"
    write_latents(root, images=12, shard_size=4, shape=(4, 4, 4), text_dim=16, text_mask=True)
    meta = json.loads((root / "meta.json").read_text())
    stream = LatentStream(root, rank_parts(meta["shards"], 0, 1), 4, 0, 2)
    empty_mask = torch.tensor([[1, 1, 0, 0, 0]])
    conditioning = Conditioning(torch.zeros(1, 5, 16), uncond_mask=empty_mask)
    cfg = CFG.model_copy(update={"caption_dropout": 0.5})
    _, hidden, mask, _ = make_batch(stream, conditioning, 0, cfg, 0, torch.device("cpu"))
    dropped = (hidden == 0).flatten(1).all(1)
    assert dropped.any() and not dropped.all()
    assert torch.equal(mask[dropped], empty_mask.expand(int(dropped.sum()), -1))
    assert (mask[~dropped] == 1).all()  # the fixture's captions fill every position
    record = LossRecorder()
    model, summary = train_denoiser(
        make_denoiser(CFG, 4, 4, 16), stream, conditioning, cfg=CFG, run_dir=tmp_path / "run", live=record
    )
    assert isinstance(model, PixArtDenoiser) and summary["final_step"] == 120
    assert record.losses[-1] < record.losses[0] * 0.8
