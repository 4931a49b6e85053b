"""The grounding demo: upload an image, type phrases (one per line), see a box for each.

    python app.py [--checkpoint DIR ...] [--host 127.0.0.1] [--port 7860]

A thin Gradio layer over :class:`simvg.Grounder`. The default model is the distilled
SynthRef student shipped in the package: it knows SynthRef's coloured shapes only, and the
page says so. Teacher runs found under ``runs/*/best`` and ``checkpoints/*`` and any
``--checkpoint`` directory (e.g. a model trained on RefCOCO) are offered in the model picker.
The grounding function is also the API endpoint ``/ground`` (image, phrases) -> (annotated
image, result dict).
"""

from __future__ import annotations

import argparse
import hashlib
import html
import io
import os
import re
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from simvg import Grounder
from simvg.data import images as simvg_images
from simvg.data.dataset import PhraseError
from simvg.data.images import ImageReadError, load_image
from simvg.data.synthref.vocabulary import COLORS
from simvg.engine.checkpoint import CheckpointError, resolve_checkpoint
from simvg.visualize import PhraseBoxes, box_color, draw_groundings
from simvg.weights import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"
MAX_PHRASES = 10
MAX_UPLOAD = "20mb"
DEFAULT_NAME = "SynthRef student (shipped)"
# Images are read up to simvg's own limit (checked from the header, before decoding); Pillow's
# lower "decompression bomb" limit would otherwise refuse or warn first, in its own words.
Image.MAX_IMAGE_PIXELS = simvg_images.MAX_PIXELS

MODEL_CARD = """\
**What the shipped model knows.** The default model (*SynthRef student*) was trained only on
SynthRef, this project's synthetic benchmark: shapes (circle, square, triangle, star, diamond,
cross) in seven colours (red, orange, yellow, green, cyan, blue, purple) and two sizes, on plain
or patterned backgrounds, named by colour, shape, size, position (left, right, top, bottom,
middle) and relation to another shape (*left of*, *above*, *nearest to*, *farthest from*, *the
bigger of the two*). It answers a phrase with every shape it names: one box (*the cyan
circle*), several (*all the stars*), or *no match* when nothing fits (*the purple square* where
there is none). A box's score is the model's chance that it is right; boxes under the
threshold (0.7) are not shown. Try the SynthRef examples below.

**What it does not know: real photographs.** On a photo it mostly says *no match*, but the
boxes it does show there are meaningless, however high their scores. To ground phrases in
photos, start the demo on a checkpoint trained on real images (RefCOCO/+/g, or SimVG's released
weights imported into simvg; see the README): `python app.py --checkpoint DIR`.
"""
PHOTO_WARNING = (
    "**This image does not look like SynthRef, the only data this model was trained on.** On a "
    "photograph its boxes are meaningless, whatever their scores. For photos, load a checkpoint "
    "trained on real images: `python app.py --checkpoint DIR`."
)

_PALETTE = np.array(list(COLORS.values()), np.int16)


def looks_like_synthref(pixels: np.ndarray) -> bool:
    """Whether an (H, W, 3) uint8 image looks like a SynthRef scene: nearly every pixel is
    either a muted background colour (low chroma) or one of SynthRef's seven object colours,
    and some pixels are the latter. Photographs fail the first test (their colours are
    anything), grey photographs the second."""
    small = Image.fromarray(pixels)
    small.thumbnail((256, 256), Image.Resampling.NEAREST)  # nearest: no blended colours
    rgb = np.asarray(small.convert("RGB")).astype(np.int16)
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    # SynthRef jitters object colours by up to 12 per channel; backgrounds keep chroma <= ~32.
    near_palette = np.abs(rgb[..., None, :] - _PALETTE).max(axis=-1).min(axis=-1) <= 24
    return float((near_palette | (chroma <= 45)).mean()) >= 0.95 and float(near_palette.mean()) >= 0.005


def knows_only_synthref(grounder: Grounder) -> bool:
    """Whether the model was trained on SynthRef (its recipe's dataset), so knows nothing else."""
    return grounder.config.data.dataset == "synthref"


def find_models(extra: list[str] | None = None) -> dict[str, Path]:
    """Display name -> checkpoint directory: the shipped student, then teachers on disk,
    then the directories given with --checkpoint (those first in the picker's order)."""
    models: dict[str, Path] = {}
    for path in extra or []:
        models[f"{Path(path).name} ({path})"] = Path(path)
    if DEFAULT_MODEL_DIR.is_dir():
        models[DEFAULT_NAME] = DEFAULT_MODEL_DIR
    for pattern in ("runs/*/best", "checkpoints/*"):
        for path in sorted(Path.cwd().glob(pattern)):
            if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
                models.setdefault(f"{path.parent.name if path.name == 'best' else path.name} ({path})", path)
    return models


class ModelCache:
    """Loaded Grounders, least recently used dropped first; one lock per load."""

    def __init__(self, models: dict[str, Path], capacity: int = 2):
        self.models = models
        self.capacity = capacity
        self._loaded: OrderedDict[str, Grounder] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> Grounder:
        if name not in self.models:
            raise gr.Error(f"Unknown model '{name}'. Choose one of: {', '.join(self.models)}")
        with self._lock:
            if name not in self._loaded:
                try:
                    self._loaded[name] = Grounder.from_pretrained(self.models[name], device="cpu")
                except (CheckpointError, FileNotFoundError, ValueError) as err:
                    raise gr.Error(f"Cannot load model '{name}': {err}") from err
                while len(self._loaded) > self.capacity:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(name)
            return self._loaded[name]


def parse_phrases(text: str | None) -> list[str]:
    """One phrase per non-empty line."""
    phrases = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not phrases:
        raise gr.Error("Type at least one phrase, e.g. 'the red circle' (one phrase per line).")
    if len(phrases) > MAX_PHRASES:
        gr.Warning(f"Only the first {MAX_PHRASES} phrases are grounded.")
        phrases = phrases[:MAX_PHRASES]
    return phrases


def read_upload(image_path: str, name: str):
    """The upload as a :class:`~simvg.data.images.LoadedImage`; errors name the file as the user
    knows it (``name``), never the server's copy of it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return load_image(image_path)
    except (ImageReadError, FileNotFoundError) as err:
        message = str(err).replace(str(image_path), f"'{name}'")
        if message.startswith("image too large"):  # simvg's limit (size known) or Pillow's (beyond twice it)
            size = re.search(r"is (\d+)x(\d+) pixels", message)
            shown = f"is {size[1]} × {size[2]} pixels: too large" if size else "is too large"
            raise gr.Error(f"'{name}' {shown}: the demo reads images up to {too_large_limit()}. Downscale it and "
                           f"upload it again.") from err  # fmt: skip
        raise gr.Error(f"Cannot read this image ({name}): {message}") from err


def too_large_limit() -> str:
    side = int(simvg_images.MAX_PIXELS**0.5)
    return f"{simvg_images.MAX_PIXELS / 1e6:.0f} megapixels (e.g. {side} × {side})"


ANSWERS = {"auto": "as the model answers", "all": "every box scoring at least the threshold",
           "best": "the best box of each phrase"}  # fmt: skip


def answers_every_box(grounder: Grounder) -> bool:
    """Whether the model gives several scored answers per phrase (generalized grounding:
    ``model.head.num_queries`` > 1), so that "no match" and several boxes are its answers."""
    return grounder.config.model.head.num_queries > 1


def ground(image_path: str | None, phrases_text: str | None, model_name: str, branch: str, cache: ModelCache,
           upload_name: str | None = None, answers: str = "auto", threshold: float = 0.7):  # fmt: skip
    """Ground every phrase in the image; returns (annotated PIL image, result dict).

    upload_name: the file's name on the user's side (errors and notes name it); default: the
    file name of ``image_path``. answers: "best" (one box per phrase, ``Grounder.predict``),
    "all" (every box scoring at least ``threshold``, possibly none: ``Grounder.predict_all``)
    or "auto" ("all" for a model with several answers per phrase, else "best"). The result dict
    holds "boxes" (the best box of each phrase that has one: text, box xyxy in the original
    image's pixels, score, branch, colour), "phrases" (per phrase its boxes, a list: none, one
    or several), "notes" (what the user should know about this result), the model, branch,
    answer mode, threshold, image size and inference time."""
    if answers not in ANSWERS:
        raise gr.Error(f"answers must be one of {', '.join(ANSWERS)}, got {answers!r}")
    if not image_path:
        raise gr.Error("Upload an image first (or pick an example).")
    name = upload_name or Path(image_path).name
    phrases = parse_phrases(phrases_text)
    grounder = cache.get(model_name)
    if branch not in grounder.branches:
        gr.Warning(f"This model has no {branch} branch; using the token branch.")
        branch = "token"
    image = read_upload(image_path, name)
    height, width = image.pixels.shape[:2]
    if answers == "auto":
        answers = "all" if answers_every_box(grounder) else "best"
    try:
        start = time.perf_counter()
        if answers == "all":
            found = grounder.predict_all(image.pixels, phrases, threshold=threshold, branch=branch)
        else:
            found = [[result] for result in grounder.predict(image.pixels, phrases, branch=branch)]
        elapsed_ms = 1000 * (time.perf_counter() - start)
    except PhraseError as err:
        raise gr.Error(str(err)) from err
    downscaled = (width, height) != (image.width, image.height)
    if downscaled:  # the pixels were decoded smaller: boxes back to the original image's pixels
        sx, sy = image.width / width, image.height / height
        found = [[replace(r, box=(r.box[0] * sx, r.box[1] * sy, r.box[2] * sx, r.box[3] * sy)) for r in results]
                 for results in found]  # fmt: skip
    groundings = []
    for i, (phrase, results) in enumerate(zip(phrases, found)):
        scores = ", ".join(f"{r.score:.2f}" for r in results) if results else "no match"
        groundings.append(PhraseBoxes(f"{i + 1}. {phrase} ({scores})", [(r.box, r.score) for r in results],
                                      box_color(i), short=str(i + 1)))  # fmt: skip
    annotated = draw_groundings(image.pixels, groundings, scale=width / image.width)
    notes = []
    if knows_only_synthref(grounder) and not looks_like_synthref(image.pixels):
        notes.append(PHOTO_WARNING)
    if downscaled:
        notes.append(f"'{name}' is {image.width} × {image.height} pixels: it is drawn at {width} × {height} (the "
                     f"model reads {grounder.config.model.image_size} × {grounder.config.model.image_size} pixels "
                     f"anyway); the boxes are in the original image's pixels.")  # fmt: skip
    colors = ["#{:02x}{:02x}{:02x}".format(*g.color) for g in groundings]
    payload = {
        "model": model_name,
        "branch": branch,
        "answers": answers,
        "threshold": threshold if answers == "all" else None,
        "image_size": [image.width, image.height],
        "inference_ms": round(elapsed_ms, 1),
        "boxes": [{**results[0].to_dict(), "color": color} for results, color in zip(found, colors) if results],
        "phrases": [{"text": phrase, "color": color,
                     "boxes": [{"box": r.to_dict()["box"], "score": r.to_dict()["score"]} for r in results]}
                    for phrase, results, color in zip(phrases, found, colors)],  # fmt: skip
        "notes": notes,
    }
    return annotated, payload


def result_table(payload: dict | None) -> str:
    """The boxes as an HTML table: per phrase its number and colour, then x0 y0 x1 y1 (original
    image pixels) and score of each of its boxes, or "no match"."""
    if not payload:
        return ""
    rows = []
    for i, phrase in enumerate(payload.get("phrases", [])):
        swatch = f'<span style="display:inline-block;width:0.9em;height:0.9em;background:{phrase["color"]}"></span>'
        head = f"<td>{i + 1}</td><td>{swatch} {html.escape(phrase['text'])}</td>"
        if not phrase["boxes"]:
            rows.append(f'<tr>{head}<td colspan="5">no match</td></tr>')
        for found in phrase["boxes"]:
            cells = "".join(f"<td>{v:.1f}</td>" for v in found["box"]) + f"<td>{found['score']:.2f}</td>"
            rows.append(f"<tr>{head}{cells}</tr>")
    header = "".join(f"<th>{h}</th>" for h in ("#", "phrase", "x0", "y0", "x1", "y1", "score"))
    return (f'<table class="simvg-boxes"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f"<p><small>Boxes in the original image's pixels ({payload['image_size'][0]} × "
            f"{payload['image_size'][1]}); score: the model's object probability.</small></p>")  # fmt: skip


def notes_text(payload: dict | None) -> str:
    return "\n\n".join(payload.get("notes", [])) if payload else ""


def upload_path(payload: dict | str | None) -> str | None:
    """The uploaded file's path from the image input's unprocessed value (a FileData dict).

    The click handler skips Gradio's preprocessing, which opens the upload with PIL and
    fails on an empty or corrupt file with a trace-like "Could not preprocess" error;
    :func:`ground` reads the file itself and says what is wrong with it."""
    return payload.get("path") if isinstance(payload, dict) else payload


def upload_name(payload: dict | str | None) -> str | None:
    """The file's name on the user's side (FileData's ``orig_name``), else its file name."""
    if isinstance(payload, dict):
        return payload.get("orig_name") or (Path(payload["path"]).name if payload.get("path") else None)
    return Path(payload).name if payload else None


def save_annotated(image) -> str:
    """Write the annotated image as a PNG file, atomically, and return its path.

    Gradio stores a returned PIL image in its content-addressed cache with a plain rewrite of
    the file, so when concurrent requests produce the same image (the same example grounded
    twice) a client still downloading the earlier copy receives a truncated file. A returned
    path is instead copied into the cache atomically (and reused when identical)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = buffer.getvalue()
    folder = Path(os.environ["GRADIO_TEMP_DIR"]) / "annotated" / hashlib.sha256(data).hexdigest()
    path = folder / "grounded.png"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=folder, prefix=".grounded.", suffix=".png")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(staging, path)
    return str(path)


def timing_text(payload: dict | None) -> str:
    if not payload:
        return ""
    n = len(payload["phrases"])
    return f"**{payload['inference_ms']:.0f} ms** for {n} phrase{'s' if n != 1 else ''} on the CPU ({payload['model']}, {payload['branch']} branch)"


def result_views(payload: dict | None) -> tuple[str, str, str]:
    """(notes, table, timing) shown beside the annotated image."""
    return notes_text(payload), result_table(payload), timing_text(payload)


def example_rows() -> list[list[str]]:
    rows = []
    for image in sorted(EXAMPLES_DIR.glob("*.png")):
        phrases = image.with_suffix(".txt")
        rows.append([str(image), phrases.read_text().strip() if phrases.is_file() else ""])
    return rows


def build_demo(models: dict[str, Path]) -> gr.Blocks:
    if not models:
        raise SystemExit("no model found: pass --checkpoint DIR (a directory with config.json and model.safetensors)")
    cache = ModelCache(models)
    names = list(models)
    with gr.Blocks(title="simvg grounding demo") as demo:
        gr.Markdown(
            "# simvg: visual grounding\nUpload an image, write one phrase per line "
            "(e.g. *the small red circle left of the blue square*), and press **Ground**."
        )
        gr.Markdown(MODEL_CARD, elem_id="model-card")
        model_state = gr.State(names[0])
        branch_state = gr.State("token")
        answers_state = gr.State("auto")
        threshold_state = gr.State(0.7)
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"])
                phrases = gr.Textbox(label="Phrases (one per line)", lines=4, placeholder="the red circle\nthe star below the blue square")
                with gr.Row():
                    model = gr.Dropdown(names, value=names[0], label="Model")
                    branch = gr.Radio(["token", "decoder"], value="token", label="Branch",
                                      info="token: fastest; decoder: teachers only")  # fmt: skip
                with gr.Row():
                    answer_mode = gr.Radio([(label, key) for key, label in ANSWERS.items()], value="auto",
                                           label="Answers", elem_id="answers")  # fmt: skip
                    threshold = gr.Slider(0.0, 1.0, value=0.7, step=0.05, label="Score threshold", elem_id="threshold",
                                          info="for 'every box': a phrase with no box scoring this much has no match")  # fmt: skip
                run = gr.Button("Ground", variant="primary")
            with gr.Column():
                annotated = gr.Image(label="Grounded", type="pil", format="png", elem_id="grounded-image")
                notes = gr.Markdown(elem_id="notes")
                table = gr.HTML(elem_id="boxes-table")
                timing = gr.Markdown(elem_id="timing")
                with gr.Accordion("Raw result (JSON, as the API returns it)", open=False):
                    boxes = gr.JSON(label="Result", elem_id="boxes")
        rows = example_rows()
        if rows:
            gr.Examples(rows, inputs=[image, phrases], label="SynthRef examples (what the shipped model knows)")
        model.change(lambda name: name, model, model_state, api_visibility="private")
        branch.change(lambda value: value, branch, branch_state, api_visibility="private")
        answer_mode.change(lambda value: value, answer_mode, answers_state, api_visibility="private")
        threshold.change(lambda value: value, threshold, threshold_state, api_visibility="private")

        def ground_ui(img, text, name, br, mode, min_score):
            annotated_image, payload = ground(upload_path(img), text, name, br, cache, upload_name(img), mode, min_score)
            return save_annotated(annotated_image), payload

        run.click(
            ground_ui,
            inputs=[image, phrases, model_state, branch_state, answers_state, threshold_state],
            outputs=[annotated, boxes],
            api_name="ground",
            concurrency_limit=1,
            preprocess=False,  # see upload_path
        ).then(result_views, boxes, [notes, table, timing], api_visibility="private")
    demo.queue(max_size=64)
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", default=[], help="a checkpoint directory (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SIMVG_PORT", 7860)))
    args = parser.parse_args()
    for path in args.checkpoint:
        try:
            resolve_checkpoint(path)
        except CheckpointError as err:
            raise SystemExit(f"--checkpoint {path}: {err}") from None
    demo = build_demo(find_models(args.checkpoint))
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD, show_error=True,
                allowed_paths=[str(EXAMPLES_DIR)])  # fmt: skip


os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(tempfile.gettempdir()) / "simvg-gradio"))

if __name__ == "__main__":
    main()
