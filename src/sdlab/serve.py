"""`sdlab serve`: a local page to try prompts on a trained pipeline folder.

One page (plain HTML + a few lines of JavaScript, no front-end build) posts its settings to
`/generate`; the server draws the image with the same code and defaults as `sdlab generate`
and answers with the PNG and the exact `sdlab generate` command that draws the same pixels.
The pipeline is loaded once; requests are served one at a time (one model, one lock). The
server binds to 127.0.0.1 unless told otherwise: it runs a model for anyone who can reach it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from sdlab.config import FLOW_SCHEDULERS, SCHEDULERS
from sdlab.drawing_rules import (
    DEFAULT_GUIDANCE,
    DEFAULT_SCHEDULER,
    DEFAULT_STEPS,
    fits,
    size_rules,
    trained_buckets,
    trained_sizes,
)

FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "scheduler", "height", "width")

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>sdlab playground</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 900px; }}
label {{ display: block; margin: .4em 0; }} input, select, textarea {{ font: inherit; }}
textarea {{ width: 100%; }} #image {{ image-rendering: pixelated; width: 256px; border: 1px solid #ccc; }}
pre {{ white-space: pre-wrap; background: #f4f4f4; padding: .6em; }} .error {{ color: #b00; }}
</style></head>
<body>
<h1>sdlab playground</h1>
<p>Model: <code>{model}</code> (trained at {trained})</p>
<form id="settings">
<label>Prompt <textarea name="prompt" rows="3" required>{prompt}</textarea></label>
<label>Negative prompt <input name="negative_prompt" size="60"></label>
<label>Seed <input name="seed" type="number" value="0"></label>
<label>Steps <input name="steps" type="number" value="{steps}"></label>
<label>Guidance <input name="guidance" type="number" step="any" value="{guidance}"></label>
<label>Scheduler <select name="scheduler">{schedulers}</select></label>
<label>Height <input name="height" type="number" value="{size}"> (a multiple of {multiple})</label>
<label>Width <input name="width" type="number" value="{size}"> (a multiple of {multiple})</label>
<button id="generate" type="submit">Generate</button>
</form>
<p id="status"></p>
<!-- the server checks every field and answers with the first bad one, shown above -->
<img id="image" alt="">
<p>The same image from the command line:</p>
<pre id="command"></pre>
<script>
const form = document.getElementById("settings");
form.addEventListener("submit", async (event) => {{
  event.preventDefault();
  const status = document.getElementById("status");
  status.textContent = "generating..."; status.className = "";
  const settings = Object.fromEntries(new FormData(form).entries());
  const reply = await fetch("/generate", {{method: "POST", body: JSON.stringify(settings)}});
  const answer = await reply.json();
  if (!reply.ok) {{ status.textContent = answer.error; status.className = "error"; return; }}
  document.getElementById("image").src = "data:image/png;base64," + answer.png;
  document.getElementById("command").textContent = answer.command;
  status.textContent = "done";
}});
</script>
</body></html>
"""


def command_line(model: str, settings: dict) -> str:
    """The `sdlab generate` command that draws what `settings` drew."""
    words = ["sdlab", "generate", "--model", model, "--prompt", settings["prompt"]]
    if settings["negative_prompt"] is not None:
        words += ["--negative-prompt", settings["negative_prompt"]]
    words += ["--seed", str(settings["seed"]), "--steps", str(settings["steps"])]
    words += ["--guidance", str(settings["guidance"]), "--scheduler", settings["scheduler"]]
    words += ["--height", str(settings["height"]), "--width", str(settings["width"]), "--out", "out.png"]
    return shlex.join(words)


class Playground:
    """A loaded pipeline and the rules its settings are checked against."""

    def __init__(self, model: str, device: str = "cpu"):
        from sdlab.models.pipeline import load_pipeline

        self.model, self.pipeline = model, load_pipeline(model, device=device)
        self.multiple, self.size = size_rules(Path(model))
        self.buckets = trained_buckets(Path(model))
        self.defaults = {"steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE, "scheduler": DEFAULT_SCHEDULER}
        flow = self.pipeline.scheduler.config.get("prediction_type") == "flow_prediction"
        self.schedulers = sorted(FLOW_SCHEDULERS if flow else SCHEDULERS)  # what samples this model
        self.lock = threading.Lock()

    def page(self, prompt: str = "") -> str:
        options = "".join(
            f'<option value="{name}"{" selected" if name == self.defaults["scheduler"] else ""}>{name}</option>'
            for name in self.schedulers
        )
        return PAGE.format(
            model=html.escape(self.model),
            size=self.size,
            trained=html.escape(trained_sizes(self.size, self.buckets)),
            multiple=self.multiple,
            prompt=html.escape(prompt),
            steps=self.defaults["steps"],
            guidance=self.defaults["guidance"],
            schedulers=options,
        )

    def settings(self, raw: dict) -> dict:
        """The request's settings, typed and checked; ValueError names the first bad one."""
        if not isinstance(raw, dict):
            raise ValueError("send the settings as a JSON object")
        prompt = str(raw.get("prompt") or "").strip()
        if not prompt:
            raise ValueError("prompt: write what to draw")
        numbers = {}
        for name, kind, default in (
            ("seed", int, 0),
            ("steps", int, self.defaults["steps"]),
            ("guidance", float, self.defaults["guidance"]),
            ("height", int, self.size),
            ("width", int, self.size),
        ):
            text = str(raw.get(name) or "").strip()
            try:
                numbers[name] = kind(text) if text else default
            except ValueError:
                raise ValueError(f"{name}: {text!r} is not a number") from None
        if numbers["steps"] < 1:
            raise ValueError(f"steps: must be at least 1, got {numbers['steps']}")
        if numbers["guidance"] < 0:
            raise ValueError(f"guidance: must be 0 or more, got {numbers['guidance']}")
        for name in ("height", "width"):
            if not fits(numbers[name], self.multiple):
                raise ValueError(f"{name}: must be a positive multiple of {self.multiple}, got {numbers[name]}")
        scheduler = str(raw.get("scheduler") or self.defaults["scheduler"])
        if scheduler not in self.schedulers:
            raise ValueError(f"scheduler: {scheduler!r} is not one of {', '.join(self.schedulers)}")
        negative = str(raw.get("negative_prompt") or "").strip() or None
        return {"prompt": prompt, "negative_prompt": negative, "scheduler": scheduler, **numbers}

    def draw(self, settings: dict) -> bytes:
        """PNG bytes of the image `sdlab generate` draws with these settings."""
        from sdlab.sampling import generate, use_scheduler

        with self.lock:
            use_scheduler(self.pipeline, settings["scheduler"])
            (image,) = generate(
                self.pipeline,
                [settings["prompt"]],
                [settings["seed"]],
                steps=settings["steps"],
                guidance=settings["guidance"],
                batch_size=1,
                negative_prompt=settings["negative_prompt"],
                progress=False,
                height=settings["height"],
                width=settings["width"],
            )
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue()


def make_server(playground: Playground, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # one line per request is noise here
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.split("?")[0] != "/":
                return self._send(404, b"not found", "text/plain")
            self._send(200, playground.page().encode(), "text/html; charset=utf-8")

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/generate":
                return self._send(404, b"not found", "text/plain")
            length = min(int(self.headers.get("Content-Length") or 0), 64_000)
            try:
                settings = playground.settings(json.loads(self.rfile.read(length) or b"{}"))
            except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
                return self._send(400, json.dumps({"error": str(exc)}).encode(), "application/json")
            png = playground.draw(settings)
            answer = {"png": base64.b64encode(png).decode(), "command": command_line(playground.model, settings)}
            self._send(200, json.dumps(answer).encode(), "application/json")

    return ThreadingHTTPServer((host, port), Handler)
