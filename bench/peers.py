"""What a user would pick instead: the shipped student and the grounding models it competes
with, side by side on this machine's CPU at batch 1, one image and one phrase, each model at
its own default input size.

    python bench/peers.py [--calls 20] [--teacher CKPT] [--image PATH --text PHRASE]
        [--out bench/results/peers.md] [--quick]

Rows: the shipped student (`simvg/weights/synthref-student`) through `Grounder.predict` in
float, int8 and (where this version has it) onnxruntime float / int8, plus its model forward
alone; the default teacher (configs/synthref_hybrid.yaml: MiniLM's packaged weights, random
stem and head; or ``--teacher CKPT``) in float and int8; SimVG with ViLT-B/32 at 384 px and,
where the `beit3` encoder exists, with BEiT-3-B at 640 px; Grounding DINO-T, OWLv2-B/16 and
Florence-2-base built from their Hugging Face config classes with the published sizes.
Models without weights here have random ones: a model's FLOPs and latency do not depend on its
weights' values (Florence-2's decoding is held to a fixed length so that this holds for it too).

One call is what a user runs to ground the phrase: from the decoded image (a PIL image in
memory) to boxes in its pixels, with the model's own pre- and post-processing. The models take
turns call by call (one warm-up call each, then ``--calls`` rounds), so that drifting machine
load hits them alike; the table gives the median and the fastest call. FLOPs per call are
counted by torch.utils.flop_counter on one call of the model itself (its forward, or
Florence-2's generation), 2 per multiply-add: matrix products, convolutions and attention;
elementwise work, normalisation and sampling ops are not counted, for every model alike.
Every model is loaded at once (about 6 GiB).
``--quick`` builds every model with tiny sizes and times 2 calls each: a check that the script
works, not a measurement. docs/peers.md says what each row is.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: never wait on one
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # time this checkout's simvg, as the `simvg export` it runs does

import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from simvg.benchmark import take_turns  # noqa: E402
from simvg.config import load_config  # noqa: E402
from simvg.data.dataset import Collator  # noqa: E402
from simvg.data.images import load_image  # noqa: E402
from simvg.engine.tasks import quiet_transformers, tokenizer_source  # noqa: E402
from simvg.inference import Grounder  # noqa: E402
from simvg.models import build_model  # noqa: E402
from simvg.models.encoders import ENCODERS  # noqa: E402
from simvg.models.pretrained import MINILM_ALIAS, load_tokenizer  # noqa: E402
from simvg.models.quantize import quantize_for_cpu  # noqa: E402
from simvg.weights import DEFAULT_MODEL_DIR  # noqa: E402

CONFIGS = ROOT / "configs"
DEFAULT_IMAGE = ROOT / "examples" / "synthref_0000003.png"
IMAGE_SIZE = (640, 480)  # COCO's most common photo size; the default image is resized to it
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
ONNX_ROWS = ("student onnxruntime", "student onnxruntime int8")
FLORENCE_BEAMS = 3  # Florence-2's published generation setting (its model card and generation config)
TINY_HEAD = ["model.head.hidden_dim=32", "model.head.tqg_layers=1", "model.head.tqg_heads=2", "model.head.tqg_ffn=64",
             "model.head.decoder_layers=1", "model.head.decoder_heads=2", "model.head.decoder_ffn=64"]  # fmt: skip
TINY_ENCODER = ["model.encoder.pretrained=null", "model.encoder.hidden_size=32", "model.encoder.num_layers=1",
                "model.encoder.num_heads=2", "model.encoder.intermediate_size=64", "model.image_size=64"]  # fmt: skip


def bench_module(name: str):
    """A sibling script of bench/ imported as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GPU_BENCH = bench_module("gpu_throughput")


class Unavailable(Exception):
    """A row that cannot run in this installation; the message says why."""


@dataclass
class Peer:
    """One table row. ``call`` grounds the phrase in the image once (None: not measured, and
    ``note`` says why). ``flops_call`` is what FLOPs are counted on (default ``call``);
    ``same_as`` names the row whose parameters and FLOPs this one shares (an int8 or ONNX run
    of the same model, whose quantized kernels the counter does not see)."""

    name: str
    call: Callable[[], object] | None
    params: int | None = None
    input_size: str = ""
    timed: str = ""
    note: str = ""
    flops_call: Callable[[], object] | None = None
    same_as: str | None = None
    warm_flops: bool = True  # count FLOPs after a warm-up call (models that keep state between calls)
    gflops: float | None = None
    times: list[float] | None = None


def unavailable(name: str, reason: str) -> Peer:
    """A row that is not measured; ``reason`` says why ("not available: ..." unless it says otherwise)."""
    return Peer(name, None, note=reason if reason.startswith("not measured") else f"not available: {reason}")


def count_parameters(model: torch.nn.Module, skip_prefix: str | None = None) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if skip_prefix is None or not n.startswith(skip_prefix))


def count_gflops(call: Callable[[], object], warm_up: bool = True) -> float:
    """FLOPs of one call of ``call`` (torch.utils.flop_counter's count), in GFLOPs; ``warm_up``
    first makes a call that builds what a model keeps between calls (SimVG's folded weights)."""
    with torch.inference_mode():
        if warm_up:
            call()
        with FlopCounterMode(display=False) as counter:
            call()
    return counter.get_total_flops() / 1e9


def no_grad(call: Callable[[], object]) -> Callable[[], object]:
    def wrapped():
        with torch.no_grad():
            return call()

    return wrapped


# ---- SimVG models through Grounder.predict -------------------------------------------------


def simvg_params(grounder: Grounder) -> int:
    """What the token path deploys: every parameter but the decoder branch's."""
    return count_parameters(grounder.model, "decoder_branch.")


def predict_call(grounder: Grounder, image: Image.Image, text: str) -> Callable[[], object]:
    return lambda: grounder.predict(image, text)


def forward_call(grounder: Grounder, image: Image.Image, text: str) -> Callable[[], object]:
    """The model's forward alone (token branch) on the inputs ``predict`` would give it."""
    sample = grounder.preprocessor(load_image(image, max_side=max(1024, grounder.config.model.image_size)), text)
    batch = Collator(grounder.tokenizer.pad_token_id)([sample])

    def call():
        with torch.no_grad():
            return grounder.model(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask, use_decoder=False)

    return call


def grounder_input(grounder: Grounder) -> str:
    size = grounder.config.model.image_size
    return f"{size}x{size} letterbox"


def build_grounder(config_path: Path, overrides: list[str], vocab_size: int | None = None, tokenizer=None) -> Grounder:
    """A SimVG model built from a recipe (pretrained encoder weights where the recipe names
    local ones, else random), wrapped as ``Grounder.from_pretrained`` would wrap a checkpoint."""
    config = load_config(config_path, overrides)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_source(config))
    torch.manual_seed(0)
    model = build_model(config.model, vocab_size or len(tokenizer))
    return Grounder(model, tokenizer, config, model.encoder.backbone_config(), device="cpu")


def student_rows(image: Image.Image, text: str, workdir: Path, onnx: bool) -> list[Peer]:
    student = Grounder.from_pretrained(DEFAULT_MODEL_DIR, device="cpu")
    student_int8 = Grounder.from_pretrained(DEFAULT_MODEL_DIR, device="cpu", quantize="int8")
    params, size = simvg_params(student), grounder_input(student)
    rows = [
        Peer("student", predict_call(student, image, text), params, size, "Grounder.predict, token branch",
             flops_call=forward_call(student, image, text)),
        Peer("student int8", predict_call(student_int8, image, text), params, size,
             "Grounder.predict(quantize='int8')", same_as="student"),
        Peer("student, model forward only", forward_call(student, image, text), params, size,
             "SimVG.forward, token branch, on the preprocessed input"),
    ]  # fmt: skip
    if onnx:
        rows += onnx_rows(image, text, workdir, params, size)
    else:
        rows += [unavailable(n, "not measured: --skip-onnx given") for n in ONNX_ROWS]
    return rows


def onnx_rows(image: Image.Image, text: str, workdir: Path, params: int, size: str) -> list[Peer]:
    """The student exported by ``simvg export --format onnx [--int8]`` and loaded with
    ``Grounder.from_pretrained(dir, backend="onnxruntime")``, where this version has both."""
    names = ONNX_ROWS
    if "backend" not in inspect.signature(Grounder.from_pretrained).parameters:
        return [unavailable(n, "Grounder.from_pretrained has no backend= in this version") for n in names]
    out = workdir / "student_onnx"
    command = [sys.executable, "-m", "simvg", "export", str(DEFAULT_MODEL_DIR), str(out), "--format", "onnx"]
    done = subprocess.run([*command, "--int8"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0 and "--int8" in done.stderr:  # an export without the int8 option
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return [unavailable(n, f"`simvg export --format onnx` failed: {last}") for n in names]
    rows = []
    for name, quantize in zip(names, (None, "int8")):
        try:
            grounder = Grounder.from_pretrained(out, device="cpu", backend="onnxruntime", quantize=quantize)
        except Exception as err:  # a missing int8 file or backend: say so in the table
            rows.append(unavailable(name, f"{type(err).__name__}: {err}"))
            continue
        what = "Grounder.predict, backend='onnxruntime'" + (", quantize='int8'" if quantize else "")
        rows.append(Peer(name, predict_call(grounder, image, text), params, size, what, same_as="student"))
    return rows


def teacher_rows(image: Image.Image, text: str, checkpoint: Path | None, quick: bool) -> list[Peer]:
    if checkpoint is not None:
        teacher = Grounder.from_pretrained(checkpoint, device="cpu")
        teacher_int8 = Grounder.from_pretrained(checkpoint, device="cpu", quantize="int8")
        origin = f"{checkpoint}"
    else:
        overrides = (TINY_ENCODER + TINY_HEAD + ["model.encoder.stem_channels=[8,16,16,32]"]) if quick else []
        teacher = build_grounder(CONFIGS / "synthref_hybrid.yaml", overrides)
        teacher_int8 = build_grounder(CONFIGS / "synthref_hybrid.yaml", overrides)
        teacher_int8.model.load_state_dict(teacher.model.state_dict())
        quantize_for_cpu(teacher_int8.model, "int8")
        teacher_int8.quantization = "int8"
        origin = "configs/synthref_hybrid.yaml, MiniLM weights, random stem and head"
    params, size = simvg_params(teacher), grounder_input(teacher)
    return [
        Peer("teacher", predict_call(teacher, image, text), params, size, f"Grounder.predict ({origin})",
             flops_call=forward_call(teacher, image, text)),
        Peer("teacher int8", predict_call(teacher_int8, image, text), params, size,
             "Grounder.predict, encoder linear layers int8", same_as="teacher"),
    ]  # fmt: skip


def simvg_vilt_row(image: Image.Image, text: str, quick: bool) -> Peer:
    overrides = GPU_BENCH.VILT_B32 + (TINY_ENCODER + TINY_HEAD if quick else [])
    grounder = build_grounder(CONFIGS / "refcoco_vilt.yaml", overrides)
    return Peer("SimVG ViLT-B/32", predict_call(grounder, image, text), simvg_params(grounder), grounder_input(grounder),
                "Grounder.predict, token branch (random weights of ViLT-B/32's sizes)",
                flops_call=forward_call(grounder, image, text))  # fmt: skip


def simvg_beit3_row(image: Image.Image, text: str, quick: bool) -> Peer:
    name = "SimVG BEiT-3-B"
    if "beit3" not in ENCODERS:
        return unavailable(name, "this version has no `model.encoder.type: beit3`")
    _, overrides, vocab = GPU_BENCH.MODELS["beit3-base"]  # SimVG's BEiT-3-B: 640 px, patch 32, 64010 text rows
    if quick:
        overrides = [o for o in overrides if not o.startswith(("model.encoder.preset=", "model.image_size="))]
        overrides += ["model.encoder.hidden_size=32", "model.encoder.num_layers=1", "model.encoder.num_heads=2",
                      "model.encoder.intermediate_size=64", "model.encoder.patch_size=16", "model.image_size=64",
                      *TINY_HEAD]  # fmt: skip
        vocab = None
    # BEiT-3 reads phrases with its sentencepiece model, which is not here: BERT's tokenizer
    # stands in (ids index the same embedding table; a short phrase is as many tokens).
    grounder = build_grounder(CONFIGS / "refcoco_vilt.yaml", overrides, vocab, load_tokenizer(MINILM_ALIAS))
    return Peer(name, predict_call(grounder, image, text), simvg_params(grounder), grounder_input(grounder),
                "Grounder.predict, token branch (random weights of BEiT-3-B's sizes)",
                flops_call=forward_call(grounder, image, text))  # fmt: skip


# ---- Hugging Face peers ------------------------------------------------------------------


def hf_class(name: str):
    cls = getattr(transformers, name, None)
    if cls is None:
        raise Unavailable(f"transformers {transformers.__version__} has no {name}")
    return cls


def size_text(pixel_values: torch.Tensor) -> str:
    return f"{pixel_values.shape[-1]}x{pixel_values.shape[-2]}"


def grounding_dino_row(image: Image.Image, text: str, quick: bool) -> Peer:
    """Grounding DINO-T (IDEA-Research/grounding-dino-tiny's sizes: Swin-T, BERT-base text
    encoder, 6+6 layers of 256, 900 queries) with its image processor's default resizing
    (shortest edge 800, longest at most 1333) and its post-processing."""
    config_cls, model_cls = hf_class("GroundingDinoConfig"), hf_class("GroundingDinoForObjectDetection")
    processor_cls, image_processor_cls = hf_class("GroundingDinoProcessor"), hf_class("GroundingDinoImageProcessor")
    swin = hf_class("SwinConfig")(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                  out_indices=[2, 3, 4])  # fmt: skip
    bert = hf_class("BertConfig")()  # bert-base-uncased
    sizes: dict = {}
    image_processor = image_processor_cls()
    if quick:
        swin = hf_class("SwinConfig")(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                                      out_indices=[2, 3, 4])  # fmt: skip
        bert = hf_class("BertConfig")(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
        sizes = dict(d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                     encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=20)  # fmt: skip
        image_processor = image_processor_cls(size={"shortest_edge": 64, "longest_edge": 96})
    config = config_cls(backbone_config=swin, text_config=bert, **sizes)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    # bert-base-uncased's vocabulary and rules: the packaged MiniLM tokenizer has exactly them.
    processor = processor_cls(image_processor=image_processor, tokenizer=load_tokenizer(MINILM_ALIAS))
    prompt = text.lower().rstrip(".") + "."  # Grounding DINO's prompt form: lower case, ending with "."

    def call():
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        return processor.post_process_grounded_object_detection(
            outputs, inputs.input_ids, threshold=0.35, text_threshold=0.25, target_sizes=[image.size[::-1]]
        )

    inputs = processor(images=image, text=prompt, return_tensors="pt")
    return Peer("Grounding DINO-T", call, count_parameters(model), f"{size_text(inputs.pixel_values)} (processor default)",
                "processor (resize, normalise, BERT tokens) + forward + post_process_grounded_object_detection",
                flops_call=no_grad(lambda: model(**inputs)), warm_flops=False)  # fmt: skip


def owlv2_row(image: Image.Image, text: str, quick: bool) -> Peer:
    """OWLv2-B/16 (google/owlv2-base-patch16-ensemble's sizes: ViT-B/16 at 960 px, CLIP text
    encoder) with its image processor (pad to square, resize to 960) and post-processing.
    CLIP's tokenizer files are not here: the phrase is 16 token ids (the processor pads every
    query to 16), which is what the model computes on whatever the words."""
    config_cls, model_cls = hf_class("Owlv2Config"), hf_class("Owlv2ForObjectDetection")
    image_processor_cls = hf_class("Owlv2ImageProcessor")
    vision, text_config, extra = {"image_size": 960, "patch_size": 16}, {}, {}
    image_processor = image_processor_cls()  # 960 x 960
    if quick:
        tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
        vision, text_config, extra = {**tiny, "image_size": 64, "patch_size": 16}, tiny, {"projection_dim": 32}
        image_processor = image_processor_cls(size={"height": 64, "width": 64})
    config = config_cls(vision_config=vision, text_config=text_config, **extra)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    length = config.text_config.max_position_embeddings  # 16
    words = len(text.split())
    input_ids = torch.randint(400, 40000, (1, length), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.zeros(1, length, dtype=torch.long)
    attention_mask[:, : min(length, words + 2)] = 1  # start, words, end; the rest is padding

    def call():
        pixel_values = image_processor(images=image, return_tensors="pt").pixel_values
        with torch.no_grad():
            outputs = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
        return image_processor.post_process_object_detection(outputs, threshold=0.1, target_sizes=[image.size[::-1]])

    pixels = image_processor(images=image, return_tensors="pt").pixel_values
    return Peer("OWLv2-B/16", call, count_parameters(model), f"{size_text(pixels)} (processor default, padded square)",
                "image processor + forward (16 text token ids) + post_process_object_detection",
                flops_call=no_grad(lambda: model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels)),
                warm_flops=False)  # fmt: skip


def florence2_row(image: Image.Image, text: str, quick: bool) -> Peer:
    """Florence-2-base (DaViT [128, 256, 512, 1024] x [1, 1, 9, 1], BART-base 6+6 layers of 768,
    51289 tokens and the <image> placeholder) at 768 x 768. Grounding is generation: the image
    processor, the vision tower, BART's encoder over the 577 image tokens and the prompt of the
    <CAPTION_TO_PHRASE_GROUNDING> task, then a fixed number of decode
    steps (3 beams, key-value cache) long enough for a box answer: the phrase echoed, four
    location tokens, start and end. BART's tokenizer files are not here: the prompt is as many
    token ids as BERT's tokenizer gives its words, and parsing the answer's location tokens
    (a string split) is not timed."""
    config_cls, model_cls = hf_class("Florence2Config"), hf_class("Florence2ForConditionalGeneration")
    image_processor_cls = hf_class("CLIPImageProcessor")
    vision = dict(embed_dim=[128, 256, 512, 1024], depths=[1, 1, 9, 1], num_heads=[4, 8, 16, 32],
                  num_groups=[4, 8, 16, 32], window_size=12, projection_dim=768)  # fmt: skip
    bart = dict(vocab_size=51290, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072)  # fmt: skip
    side = 768
    if quick:
        vision = dict(embed_dim=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], num_groups=[1, 2, 4, 8],
                      window_size=2, projection_dim=32)  # fmt: skip
        bart = dict(vocab_size=51290, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64)  # fmt: skip
        side = 64
    config = config_cls(vision_config=vision, text_config=bart)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    image_processor = image_processor_cls(size={"height": side, "width": side}, do_center_crop=False,
                                          image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)  # fmt: skip
    bert = load_tokenizer(MINILM_ALIAS)
    prompt_tokens = len(bert.tokenize(f"Locate the phrases in the caption: {text}"))  # <CAPTION_TO_PHRASE_GROUNDING>
    steps = 1 + len(bert.tokenize(text)) + 4 + 1  # <s>, the phrase, 4 location tokens, </s>
    pixels = image_processor(images=image, return_tensors="pt").pixel_values
    with torch.no_grad():
        image_tokens = model.get_image_features(pixels).pooler_output.shape[1]  # 577 at 768 px
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 50000, (prompt_tokens,), generator=generator)
    bos, eos = config.text_config.bos_token_id, config.text_config.eos_token_id
    input_ids = torch.cat([torch.full((image_tokens,), config.image_token_id), torch.tensor([bos]), prompt,
                           torch.tensor([eos])])[None]  # fmt: skip
    attention_mask = torch.ones_like(input_ids)

    def generate(pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                                  max_new_tokens=steps, min_new_tokens=steps, num_beams=FLORENCE_BEAMS,
                                  do_sample=False)  # fmt: skip

    return Peer("Florence-2-base", lambda: generate(image_processor(images=image, return_tensors="pt").pixel_values),
                count_parameters(model), f"{size_text(pixels)} (processor)",
                f"image processor + vision tower + BART encoder ({image_tokens} image + {prompt_tokens + 2} text "
                f"tokens) + {steps} decode steps, {FLORENCE_BEAMS} beams",
                flops_call=lambda: generate(pixels), warm_flops=False)  # fmt: skip


# ---- the machine -------------------------------------------------------------------------


def lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def cpu_clock_ghz(info: dict[str, str]) -> tuple[float | None, str]:
    """The clock to multiply by: lscpu's max MHz, else the kernel's current (nominal under a hypervisor)."""
    if info.get("CPU max MHz"):
        return float(info["CPU max MHz"]) / 1000, "lscpu 'CPU max MHz'"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000, "/proc/cpuinfo 'cpu MHz' (nominal: boost may be higher)"
    except OSError:
        pass
    return None, "no clock reported"


def fp32_flops_per_cycle(info: dict[str, str]) -> tuple[int, str]:
    """Peak fp32 FLOPs per cycle per core from the vector ISA: FMA units x fp32 lanes x 2.

    AVX-512 on Intel server cores: 2 units x 16 lanes x 2 = 64 (some models have 1 unit: 32).
    AMD Zen 4 (family 25 with AVX-512) runs 512-bit FMAs on two 256-bit units: 2 x 8 x 2 = 32;
    Zen 5 (family 26) has 512-bit units: 64. AVX2 with FMA: 2 x 8 x 2 = 32. AVX: 8 x 2 = 16."""
    flags = set(info.get("Flags", "").split())
    amd = "AMD" in info.get("Vendor ID", "")
    family = int(info.get("CPU family", "0") or 0)
    if "avx512f" in flags:
        if amd and family < 26:
            return 32, "AVX-512 on Zen 4's two 256-bit FMA units: 2 units x 8 fp32 lanes x 2 FLOPs"
        return 64, "AVX-512: 2 FMA units x 16 fp32 lanes x 2 FLOPs"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2: 2 FMA units x 8 fp32 lanes x 2 FLOPs"
    if "avx" in flags:
        return 16, "AVX: 8 fp32 lanes x (1 add + 1 mul)"
    return 8, "SSE: 4 fp32 lanes x (1 add + 1 mul)"


def cpu_peak(info: dict[str, str]) -> dict:
    """An estimate of the CPU's fp32 peak for the threads torch uses: threads x clock x FLOPs/cycle."""
    threads = torch.get_num_threads()
    ghz, clock_source = cpu_clock_ghz(info)
    per_cycle, isa = fp32_flops_per_cycle(info)
    gflops = None if ghz is None else threads * ghz * per_cycle
    return {"gflops": gflops, "threads": threads, "ghz": ghz, "clock_source": clock_source, "per_cycle": per_cycle, "isa": isa}


def matmul_gflops(n: int, repeats: int) -> float:
    """The best rate of an n x n fp32 matrix product on this CPU: a practical ceiling."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def machine_line(info: dict[str, str]) -> str:
    name = info.get("Model name") or platform.processor() or "unknown CPU"
    family = f"family {info.get('CPU family', '?')}, model {info.get('Model', '?')}"
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in info.get("Flags", "").split()]
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    try:
        import onnxruntime

        versions += f", onnxruntime {onnxruntime.__version__}"
    except ImportError:
        pass
    return (f"{info.get('Vendor ID', '')} {name} ({family}), {info.get('CPU(s)', os.cpu_count())} CPUs, "
            f"{info.get('Thread(s) per core', '?')} thread(s) per core, L3 {info.get('L3 cache', '?')}, "
            f"{info.get('Hypervisor vendor', 'no')} hypervisor; ISA: {', '.join(isa)}; torch threads "
            f"{torch.get_num_threads()}; {versions}")  # fmt: skip


# ---- the run -----------------------------------------------------------------------------


def load_inputs(image_path: Path | None, text: str | None) -> tuple[Image.Image, str, str]:
    """The image (RGB, in memory) every model grounds the phrase in, and a line saying what it is."""
    if image_path is None:
        image = Image.open(DEFAULT_IMAGE).convert("RGB").resize(IMAGE_SIZE, Image.BILINEAR)
        phrase = text or DEFAULT_IMAGE.with_suffix(".txt").read_text().split("\n")[0].strip()
        what = f"{DEFAULT_IMAGE.relative_to(ROOT)} resized to {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}"
    else:
        image = Image.open(image_path).convert("RGB")
        phrase = text or "the object in the middle"
        what = f"{image_path} ({image.width}x{image.height})"
    return image, phrase, what


BUILDERS: dict[str, Callable[..., Peer]] = {
    "SimVG ViLT-B/32": simvg_vilt_row,
    "SimVG BEiT-3-B": simvg_beit3_row,
    "Grounding DINO-T": grounding_dino_row,
    "OWLv2-B/16": owlv2_row,
    "Florence-2-base": florence2_row,
}


def build_rows(image: Image.Image, text: str, workdir: Path, args) -> list[Peer]:
    start = time.perf_counter()
    rows = student_rows(image, text, workdir, not args.skip_onnx)
    rows += teacher_rows(image, text, args.teacher, args.quick)
    print(f"built the student and the teacher ({time.perf_counter() - start:.0f} s)", flush=True)
    for name, builder in BUILDERS.items():
        start = time.perf_counter()
        try:
            rows.append(builder(image, text, args.quick))
        except Unavailable as err:
            rows.append(unavailable(name, str(err)))
        print(f"built {name} ({time.perf_counter() - start:.0f} s)", flush=True)
    return rows


def measure(rows: list[Peer], calls: int) -> None:
    """Count each row's FLOPs on one call, then time all rows taking turns."""
    GPU_BENCH.count_cpu_attention()
    by_name = {row.name: row for row in rows}
    for row in rows:
        if row.call is None:
            continue
        if row.same_as is not None:
            row.gflops = by_name[row.same_as].gflops
        else:
            start = time.perf_counter()
            row.gflops = count_gflops(row.flops_call or row.call, row.warm_flops)
            print(f"{row.name}: {row.gflops:.3g} GFLOPs per call ({time.perf_counter() - start:.1f} s)", flush=True)
    timed = {row.name: row.call for row in rows if row.call is not None}
    start = time.perf_counter()
    with torch.inference_mode():
        times = take_turns(timed, seconds=0.0, min_calls=calls)
    print(f"timed {calls} rounds ({time.perf_counter() - start:.0f} s)", flush=True)
    for row in rows:
        row.times = times.get(row.name)


def median_ms(row: Peer) -> float:
    return 1000 * statistics.median(row.times)


def format_report(rows: list[Peer], args, machine: str, peak: dict, ceiling: float, inputs: str, text: str) -> str:
    student = next(r for r in rows if r.name == "student")
    forward = next(r for r in rows if r.name == "student, model forward only")
    lines = [
        "# Grounding models side by side on this CPU",
        "",
        f"Machine: {machine}.",
        f"Image: {inputs}; phrase \"{text}\"; batch 1, fp32 unless the row says int8. Each model {args.calls} "
        "timed calls, taking turns call by call after one warm-up call each; median and fastest. "
        "Random weights wherever this machine has none (same FLOPs and latency as trained ones).",
        "",
        "| model | input (w x h) | params (M) | model GFLOPs / call | median ms | fastest ms | x student's time "
        "| GFLOP/s (median) | what one call does |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in rows:
        if row.call is None:
            lines.append(f"| {row.name} | | | | | | | | {row.note} |")
            continue
        ms, fastest = median_ms(row), 1000 * min(row.times)
        flops = f"{row.gflops:.3g}" + (f" (as {row.same_as})" if row.same_as else "")
        rate = row.gflops / (ms / 1000)
        lines.append(f"| {row.name} | {row.input_size} | {row.params / 1e6:.2f} | {flops} | {ms:.1f} | {fastest:.1f} | "
                     f"{ms / median_ms(student):.2f} | {rate:.3g} | {row.timed} |")  # fmt: skip
    peak_text = "unknown (no clock)" if peak["gflops"] is None else f"{peak['gflops']:.0f} GFLOP/s"
    clock = "?" if peak["ghz"] is None else f"{peak['ghz']:.2f}"
    threads = f"{peak['threads']} thread{'s' if peak['threads'] != 1 else ''}"
    lines += [
        "",
        f"CPU fp32 peak (an estimate): {threads} x {clock} GHz ({peak['clock_source']}) x {peak['per_cycle']} FLOPs/cycle "
        f"({peak['isa']}) = {peak_text}. A {args.matmul_size}x{args.matmul_size} fp32 matrix product (torch.mm, best of "
        f"{args.matmul_repeats}) reaches {ceiling:.0f} GFLOP/s: the practical ceiling.",
    ]  # fmt: skip
    if peak["gflops"] is not None and ceiling > peak["gflops"]:
        implied = ceiling / (peak["threads"] * peak["per_cycle"])
        lines[-1] += (f" It beats the estimate: the cores run above the reported clock (boost), at least at "
                      f"{implied:.2f} GHz for {peak['per_cycle']} FLOPs/cycle.")  # fmt: skip
    for row in (student, forward):
        rate = row.gflops / (median_ms(row) / 1000)
        share = "" if peak["gflops"] is None else f"{100 * rate / peak['gflops']:.1f}% of the estimated peak, "
        lines.append(f"- {row.name}: {rate:.2f} GFLOP/s = {share}{100 * rate / ceiling:.1f}% of the matrix-product rate.")
    command = " ".join(["python bench/peers.py", *(shlex.quote(a) for a in args.argv)])
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


def separate_labels(fig, labels: list) -> None:
    """Move each label down (in steps of its height) until its text overlaps no label placed
    before it; a grey line joins a label to its point."""
    from matplotlib.text import Text

    fig.canvas.draw()
    placed = []
    for label in labels:
        box = Text.get_window_extent(label)  # the text alone, without its line
        for _ in range(20):
            if not any(box.overlaps(other) for other in placed):
                break
            dx, dy = label.get_position()
            label.set_position((dx, dy - 0.8 * box.height * 72 / fig.dpi))
            box = Text.get_window_extent(label)
        placed.append(box)


def plot(rows: list[Peer], path: Path) -> None:
    """Median latency against parameters and against GFLOPs per call, log scales, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r.times and not r.name.endswith("forward only")]
    groups = {"shipped SynthRef models": "tab:blue", "SimVG, RefCOCO-size encoders": "tab:green",
              "other grounding models": "tab:orange"}  # fmt: skip

    def group(row: Peer) -> str:
        return list(groups)[0 if row.name.startswith(("student", "teacher")) else 1 if row.name.startswith("SimVG") else 2]

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=120)
    for ax, key, label in ((axes[0], "params", "parameters (M)"), (axes[1], "gflops", "model GFLOPs per call")):
        labels = []
        for row in measured:
            x, y = (row.params / 1e6 if key == "params" else row.gflops), median_ms(row)
            ax.scatter(x, y, color=groups[group(row)], zorder=3)
            labels.append(ax.annotate(row.name, (x, y), textcoords="offset points", xytext=(8, 0), fontsize=7,
                                      va="center", arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "dimgrey"}))  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("median ms per call (batch 1, CPU)")
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.25, y=0.1)
        separate_labels(fig, labels)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=g) for g, c in groups.items()]
    axes[1].legend(handles=handles, fontsize=7, loc="lower right")
    fig.suptitle("Grounding one phrase in one image on this CPU: latency against size", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[Peer]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per model (rounds of turns)")
    parser.add_argument("--teacher", type=Path, default=None, help="a trained teacher checkpoint directory")
    parser.add_argument("--image", type=Path, default=None, help=f"default: {DEFAULT_IMAGE.name} resized to 640x480")
    parser.add_argument("--text", default=None, help="the phrase (default: the example image's)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--skip-onnx", action="store_true", help="leave out the ONNX rows (their export takes ~40 s)")
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 calls each: does the script work?")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "peers.md")
    parser.add_argument("--plot", type=Path, default=None, help="default: --out with .png")
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    if args.quick:
        args.calls, args.matmul_size, args.matmul_repeats = min(args.calls, 2), 256, 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    quiet_transformers()
    transformers.logging.set_verbosity_error()
    image, text, inputs = load_inputs(args.image, args.text)
    info = lscpu()
    with tempfile.TemporaryDirectory() as workdir:
        rows = build_rows(image, text, Path(workdir), args)
        measure(rows, args.calls)
    ceiling = matmul_gflops(args.matmul_size, args.matmul_repeats)
    report = format_report(rows, args, machine_line(info), cpu_peak(info), ceiling, inputs, text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    plot(rows, args.plot or args.out.with_suffix(".png"))
    print(report)
    return rows


if __name__ == "__main__":
    main()
