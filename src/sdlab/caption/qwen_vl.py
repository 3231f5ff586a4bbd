"""Qwen2.5-VL captions: batched greedy generation, validated, cached by content.

The model and processor are real transformers code (`from_pretrained` of a hub id or a
local folder). A batch of images goes through one `generate` call with left padding, so
a batched caption equals the unbatched one. Raw generations are cached by (image md5, the
exact pixels shown (a hash of the packed image, so `image_px` counts), the title as it
enters the prompt, model, prompt, generation params); validation happens when the table is
assembled, so changing its bounds never recaptions.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import torch
from PIL import Image

from sdlab.prompts import safe_title, title_message
from sdlab.workers import device_and_dtype


@dataclass(frozen=True)
class GenerationSettings:
    model: str
    prompt: str
    max_new_tokens: int
    min_pixels: int
    max_pixels: int

    def cache_key(self, md5: str, pixels: str, title: str) -> str:
        """Identifies one caption: the image (original bytes and the pixels shown), the title as
        it enters the prompt, the model, the prompt, how it was generated."""
        used_title = safe_title(title) if "{title}" in self.prompt else ""
        blob = json.dumps(
            {
                "md5": md5,
                "pixels": pixels,
                "title": used_title,
                "model": self.model,
                "prompt": self.prompt,
                "max_new_tokens": self.max_new_tokens,
                "min_pixels": self.min_pixels,
                "max_pixels": self.max_pixels,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()[:12]


def conversation(prompt: str, image: Image.Image, title: str, min_pixels: int, max_pixels: int) -> list[dict]:
    """Instruction (system) apart from data (user: the image, then the cleaned title labelled
    as data). The title enters only when the prompt mentions `{title}`."""
    content = [{"type": "image", "image": image, "min_pixels": min_pixels, "max_pixels": max_pixels}]
    if "{title}" in prompt:
        content.append({"type": "text", "text": title_message(safe_title(title))})
    return [{"role": "system", "content": [{"type": "text", "text": prompt}]}, {"role": "user", "content": content}]


_DEBRIS = re.compile(r"^(assistant|answer|caption)\s*[:\n]\s*", re.I)


def clean_caption(raw: str) -> str:
    """One line: chat debris, quotes and surrounding whitespace stripped."""
    text = raw.replace("<|im_end|>", "").strip()
    text = _DEBRIS.sub("", text)
    text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    text = text.strip("`'\" ").replace("\u201c", "").replace("\u201d", "")
    return re.sub(r"\s+", " ", text).strip()


def validate_caption(caption: str, title: str, min_chars: int, max_chars: int, require_title: bool) -> str:
    """'' when the caption is usable, else the reason it is not."""
    if not caption:
        return "empty"
    if len(caption) < min_chars:
        return "too_short"
    if len(caption) > max_chars:
        return "too_long"
    title = safe_title(title)
    if require_title and title and title.lower() not in caption.lower():
        return "missing_title"
    return ""


class QwenCaptioner:
    """Owns a Qwen2.5-VL model and processor; captions batches of images."""

    def __init__(self, settings: GenerationSettings, device: str | None = "cpu", precision: str = "bf16"):
        """`device` None: this worker's GPU if it has one, else the CPU."""
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        self.settings = settings
        self.device, dtype = device_and_dtype(precision, device)
        size = {"shortest_edge": settings.min_pixels, "longest_edge": settings.max_pixels}  # pixel counts
        self.processor = AutoProcessor.from_pretrained(settings.model, size=size)
        self.processor.tokenizer.padding_side = "left"  # batched generation appends on the right
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(settings.model, dtype=dtype)
        self.model = self.model.to(self.device).eval()

    def messages(self, image: Image.Image, title: str) -> list[dict]:
        return conversation(self.settings.prompt, image, title, self.settings.min_pixels, self.settings.max_pixels)

    @torch.no_grad()
    def generate(self, images: list[Image.Image], titles: list[str]) -> list[str]:
        """Raw generations, one per image, from a single batched greedy `generate`."""
        from qwen_vl_utils import process_vision_info

        conversations = [self.messages(image, title) for image, title in zip(images, titles, strict=True)]
        texts = [
            self.processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
        ]
        image_inputs, _ = process_vision_info(conversations)
        inputs = self.processor(text=texts, images=image_inputs, padding=True, return_tensors="pt").to(self.device)
        output = self.model.generate(**inputs, max_new_tokens=self.settings.max_new_tokens, do_sample=False)
        generated = output[:, inputs.input_ids.shape[1] :]
        return self.processor.batch_decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
