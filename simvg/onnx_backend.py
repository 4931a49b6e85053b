"""ONNX export of a grounding model and its onnxruntime runner.

``simvg export CKPT OUT --format onnx`` writes OUT with ``config.json``, the tokenizer files
and ``model.onnx``: the model's forward from the letterboxed uint8 images and token ids to the
token branch's (and, with ``--decoder``, the decoder branch's) logits and boxes, with a
dynamic batch size and phrase length (``--int8`` adds ``model.int8.onnx``, its linear layers
quantized by onnxruntime). Everything before (image decoding, letterbox, tokenization) and
after (scores, boxes back to the original pixels) stays in Python and is shared with the torch
backend: ``Grounder.from_pretrained(OUT)`` runs the graph through :class:`OnnxRuntimeModel`,
which takes the torch model's arguments and returns its output dictionary.

Graph inputs: ``images`` (B, 3, S, S) uint8, ``pixel_mask`` (B, S, S) bool, ``input_ids``
(B, L) int64, ``text_mask`` (B, L) bool. Outputs: ``token_logits`` (B, 2) or (B, Q, 2),
``token_boxes`` (B, 4) or (B, Q, 4) [, ``decoder_logits`` (B, Q, 2), ``decoder_boxes``
(B, Q, 4)]; boxes normalised cx, cy, w, h in the letterbox frame, class 0 = object.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from simvg.engine.checkpoint import ONNX_FILES

# ONNX operator set of the exported graphs (LayerNormalization needs 17, the Gelu op 20).
ONNX_OPSET = 20
ONNX_FILE, ONNX_INT8_FILE = ONNX_FILES
INPUT_NAMES = ("images", "pixel_mask", "input_ids", "text_mask")
# A box of the graph may differ from the torch model's by this many letterbox pixels at most
# (float rounding of a different order of operations; checked at export).
EXPORT_BOX_TOLERANCE_PX = 0.5


def _output_names(decoder: bool) -> list[str]:
    return ["token_logits", "token_boxes"] + (["decoder_logits", "decoder_boxes"] if decoder else [])


class _Exported(nn.Module):
    """The model's forward as a function of tensors alone, returning a flat tuple of outputs."""

    def __init__(self, model: nn.Module, decoder: bool):
        super().__init__()
        self.model = model
        self.decoder = decoder

    def forward(self, images, pixel_mask, input_ids, text_mask):
        out = self.model(images, pixel_mask, input_ids, text_mask, use_decoder=self.decoder)
        flat = [out["token"]["logits"], out["token"]["boxes"]]
        if self.decoder:
            flat += [out["decoder"]["logits"], out["decoder"]["boxes"]]
        return tuple(t.float() for t in flat)


def example_inputs(image_size: int, text_length: int, vocab_size: int, batch_size: int = 2,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """A batch with padding in both the images (a letterboxed wide and tall image) and the
    phrases (rows of different lengths, token ids below ``vocab_size``), so that no shortcut
    for unpadded inputs is traced."""
    generator = torch.Generator().manual_seed(seed)
    size = image_size
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator)
    pixel_mask = torch.ones(batch_size, size, size, dtype=torch.bool)
    input_ids = torch.randint(vocab_size // 2, vocab_size, (batch_size, text_length), generator=generator)
    text_mask = torch.ones(batch_size, text_length, dtype=torch.bool)
    for row in range(batch_size):
        valid = max(3, text_length - 2 * row)
        text_mask[row, valid:] = False
        input_ids[row, valid:] = 0
        if row % 2:
            pixel_mask[row, :, size * 2 // 3 :] = False
        elif row:
            pixel_mask[row, size // 2 :, :] = False
    images[~pixel_mask[:, None].expand_as(images)] = 0
    return images, pixel_mask, input_ids, text_mask


def export_graph(model: nn.Module, path: str | Path, image_size: int, max_text_length: int, vocab_size: int,
                 decoder: bool, metadata: dict[str, str] | None = None) -> float:  # fmt: skip
    """Write ``model``'s forward (eval mode, token branch [+ decoder branch]) as an ONNX graph
    at ``path`` (one file, weights inside), with opset :data:`ONNX_OPSET`, a dynamic batch
    size and a dynamic phrase length up to ``max_text_length`` tokens (of a vocabulary of
    ``vocab_size``).

    The graph is checked against the model on a padded batch of 2 and on one unpadded
    sample; returns the largest box difference in letterbox pixels, and raises ValueError when
    it exceeds :data:`EXPORT_BOX_TOLERANCE_PX`.
    """
    model = model.eval()
    wrapper = _Exported(model, decoder).eval()
    # Tracing decomposes an nn.GRU (the words landmark pointer) into one step per token, which
    # fixes the phrase length; as one op of its own it becomes ONNX's GRU instead.
    grus = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if isinstance(child, nn.GRU)]  # fmt: skip
    for parent, name, child in grus:
        setattr(parent, name, _OneOpGRU(child))
    try:
        return _export_checked(wrapper, path, image_size, max_text_length, vocab_size, decoder, metadata)
    finally:
        for parent, name, child in grus:
            setattr(parent, name, child)


def _export_checked(wrapper: _Exported, path: str | Path, image_size: int, max_text_length: int, vocab_size: int,
                    decoder: bool, metadata: dict[str, str] | None) -> float:  # fmt: skip
    import onnx

    inputs = example_inputs(image_size, min(8, max_text_length), vocab_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("length", min=3, max=max(4, max_text_length))
    dynamic = {"images": {0: batch}, "pixel_mask": {0: batch}, "input_ids": {0: batch, 1: length},
               "text_mask": {0: batch, 1: length}}  # fmt: skip
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter reports each step and warns about internals (flattened GRU weights).
        warnings.simplefilter("ignore")
        # One call first: the model's caches of constants (grid centres, position encodings)
        # then hold real tensors, which tracing reads, instead of being filled while tracing.
        wrapper(*inputs)
        program = torch.onnx.export(wrapper, inputs, dynamo=True, opset_version=ONNX_OPSET, input_names=INPUT_NAMES,
                                    output_names=_output_names(decoder), dynamic_shapes=dynamic, verbose=False,
                                    optimize=True, custom_translation_table=_translations())  # fmt: skip
    proto = program.model_proto
    for tensor in proto.graph.input:
        dims = [d.dim_param or d.dim_value for d in tensor.type.tensor_type.shape.dim]
        fixed = [axis for axis in ((0, 1) if tensor.name in ("input_ids", "text_mask") else (0,)) if isinstance(dims[axis], int)]
        if fixed:  # the exporter fell back to a graph traced for the example's shapes
            raise ValueError(f"the exported graph's input {tensor.name} has fixed dimensions {dims} (axes {fixed} should "
                             "be dynamic: batch size, phrase length); this model cannot be exported with them")  # fmt: skip
    proto.doc_string = "simvg grounding model: letterboxed uint8 images and token ids -> logits and boxes"
    entries = {"opset": str(ONNX_OPSET), "image_size": str(image_size), "max_text_length": str(max_text_length),
               "outputs": ",".join(_output_names(decoder)), **(metadata or {})}  # fmt: skip
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save_model(proto, str(path))
    runner = OnnxRuntimeModel(path)
    worst = 0.0
    for check in (inputs, example_inputs(image_size, min(5, max_text_length), vocab_size, batch_size=1, seed=1)):
        with torch.no_grad():
            expected = wrapper(*check)
        got = runner.run_flat(*check)
        for name, want, have in zip(_output_names(decoder), expected, got):
            if name.endswith("boxes"):
                worst = max(worst, float((want - have).abs().max()) * image_size)
    if worst > EXPORT_BOX_TOLERANCE_PX:
        raise ValueError(f"the exported graph's boxes differ from the model's by {worst:.2f} px "
                         f"(tolerance {EXPORT_BOX_TOLERANCE_PX} px); the export is not usable")  # fmt: skip
    return worst


@torch.library.custom_op("simvg::gru", mutates_args=())
def _gru(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """A one-layer batch-first GRU from zero state: x (B, L, I) -> every step's state (B, L, H)."""
    hidden = torch.zeros(1, x.shape[0], w_hh.shape[1], dtype=x.dtype, device=x.device)
    return torch.gru(x, hidden, [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, False, False, True)[0]


@_gru.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh):
    return x.new_empty(x.shape[0], x.shape[1], w_hh.shape[1])


class _OneOpGRU(nn.Module):
    """``gru`` (one layer, one direction, batch first, with biases) run as the single op
    ``simvg::gru``, for export; returns (states, None) where nn.GRU returns (states, last)."""

    def __init__(self, gru: nn.GRU):
        super().__init__()
        if gru.num_layers != 1 or gru.bidirectional or not gru.batch_first or not gru.bias:
            raise ValueError("ONNX export handles one-layer, one-direction, batch-first GRUs with biases")
        self.gru = gru

    def forward(self, x: torch.Tensor, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if hidden is not None:
            raise ValueError("ONNX export handles GRUs that start from a zero state")
        gru = self.gru
        return _gru(x, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0), None


def _translations() -> dict:
    """ONNX translations: adaptive max pooling (the pixel mask to the token grid; torch 2.11's
    exporter has none) as the max pool of a fixed window it is here, the input side being a
    multiple of the output's; ``simvg::gru`` (:class:`_OneOpGRU`) as ONNX's GRU."""
    from onnxscript import opset18 as op

    def adaptive_max_pool2d(x, output_size):
        height, width = x.shape[-2], x.shape[-1]
        if not isinstance(height, int) or height % output_size[0] or width % output_size[1]:
            raise ValueError(f"adaptive max pooling of {height} x {width} to {output_size}: the export needs a "
                             "fixed input size that is a multiple of the output size")  # fmt: skip
        window = [height // output_size[0], width // output_size[1]]
        values, indices = op.MaxPool(x, kernel_shape=window, strides=window)
        return values, indices

    def gru(x, w_ih, w_hh, b_ih, b_hh):
        # torch stacks the gates r, z, n; ONNX z, r, h. torch's GRU resets before the
        # hidden state's linear map: linear_before_reset=1.
        def zrn(weight):
            r, z, n = op.Split(weight, num_outputs=3, axis=0)
            return op.Concat(z, r, n, axis=0)

        w = op.Unsqueeze(zrn(w_ih), [0])
        r = op.Unsqueeze(zrn(w_hh), [0])
        b = op.Unsqueeze(op.Concat(zrn(b_ih), zrn(b_hh), axis=0), [0])
        states, _ = op.GRU(op.Transpose(x, perm=[1, 0, 2]), w, r, b, hidden_size=w_hh.shape[1], linear_before_reset=1)
        return op.Transpose(op.Squeeze(states, [1]), perm=[1, 0, 2])  # (L, 1, B, H) -> (B, L, H)

    return {torch.ops.aten.adaptive_max_pool2d.default: adaptive_max_pool2d, torch.ops.simvg.gru.default: gru}


def quantize_graph(source: str | Path, target: str | Path) -> int:
    """Write ``source``'s graph with the encoder's linear layers in int8 (as the torch
    backend's ``quantize="int8"``, :mod:`simvg.models.quantize`): int8 weights with one scale
    per output channel, activations quantized per call (onnxruntime's dynamic quantization).
    Products of two activations (attention) and the heads stay float. Returns the number of
    layers quantized.

    Quantizing every matrix product with a weight (the heads too) lost 0.6 points of the
    shipped student's SynthRef val accuracy (92.4 -> 91.8, 1000 expressions), the encoder's
    alone 0.4 (92.0, as torch's int8) (``simvg eval ... --int8`` on each export)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source))
    weights = {initializer.name for initializer in graph.graph.initializer}
    nodes = [node.name for node in graph.graph.node if node.op_type in ("MatMul", "Gemm")
             and any(name in weights for name in node.input[1:2]) and _in_module(node, "model.encoder")]  # fmt: skip
    if not nodes:
        raise ValueError(f"{source}: no linear layer of the encoder found to quantize (the graph's nodes carry no "
                         "module paths)")  # fmt: skip
    # The quantizer infers every shape again; some exporters' own shape annotations (torch
    # 2.11's) contradict that inference, so they are left out.
    del graph.graph.value_info[:]
    logger = logging.getLogger()  # the quantizer logs advice on the root logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = Path(tmp) / "model.onnx"
            onnx.save_model(graph, str(plain))
            quantize_dynamic(str(plain), str(target), weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_quantize=nodes)  # fmt: skip
    except Exception as err:  # onnx and onnxruntime raise their own exception types
        raise ValueError(f"int8 quantization of {source} failed: {err}") from err
    finally:
        logger.setLevel(level)
    return len(nodes)


def _in_module(node, module: str) -> bool:
    """Whether an exported graph's ``node`` comes from the model's submodule ``module``
    (the exporter records each node's module path in its metadata)."""
    scopes = next((entry.value for entry in node.metadata_props if entry.key == "pkg.torch.onnx.name_scopes"), "")
    return f"'{module}'" in scopes


class OnnxRuntimeModel:
    """An exported graph run by onnxruntime with the torch model's call signature.

    ``model(images, pixel_mask, input_ids, text_mask, use_decoder=None)`` returns
    ``{"token": {"logits", "boxes"}[, "decoder": {"logits", "boxes"}]}`` as CPU torch
    tensors, the shapes of :class:`simvg.models.SimVG`'s outputs.
    threads: onnxruntime's intra-op threads (default: torch's thread count, so both backends
    use the cores a user gave torch). Idle threads do not spin between calls: a demo waiting
    for its next request leaves the CPU to others.
    """

    training = False

    def __init__(self, path: str | Path, threads: int | None = None, device: str | torch.device = "cpu"):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError("the onnxruntime backend needs onnxruntime: pip install 'simvg[onnx]'") from err
        self.path = Path(path)
        self.device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError("device 'cuda' with the onnxruntime backend needs onnxruntime-gpu "
                                 "(CUDAExecutionProvider); use device 'cpu' or the torch backend")  # fmt: skip
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for unreadable graphs
            raise ValueError(f"{self.path}: not a usable ONNX graph: {err}") from err
        self.output_names = [output.name for output in self.session.get_outputs()]
        if self.output_names[:2] != ["token_logits", "token_boxes"]:
            raise ValueError(f"{self.path}: expected outputs token_logits, token_boxes; the graph has {self.output_names}")
        self.has_decoder = "decoder_logits" in self.output_names
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.opset = int(metadata.get("opset", 0)) or None

    def eval(self) -> OnnxRuntimeModel:
        return self

    def to(self, device: str | torch.device) -> OnnxRuntimeModel:
        if torch.device(device) != self.device:
            raise ValueError(f"this ONNX graph was loaded for {self.device}; load it again for {device}")
        return self

    def run_flat(self, images, pixel_mask, input_ids, text_mask, decoder: bool | None = None) -> list[torch.Tensor]:
        """The graph's outputs in order (the decoder's only when ``decoder``, default: when present)."""
        names = self.output_names if decoder or (decoder is None and self.has_decoder) else self.output_names[:2]
        feeds = {"images": _numpy(images), "pixel_mask": _numpy(pixel_mask), "input_ids": _numpy(input_ids),
                 "text_mask": _numpy(text_mask)}  # fmt: skip
        return [torch.from_numpy(value) for value in self.session.run(names, feeds)]

    def __call__(self, images, pixel_mask, input_ids, text_mask, use_decoder: bool | None = None) -> dict:
        decoder = self.has_decoder if use_decoder is None else use_decoder
        if decoder and not self.has_decoder:
            raise ValueError(f"{self.path} was exported without the decoder branch (simvg export --decoder adds it)")
        values = self.run_flat(images, pixel_mask, input_ids, text_mask, decoder)
        out = {"token": {"logits": values[0], "boxes": values[1]}}
        if decoder:
            out["decoder"] = {"logits": values[2], "boxes": values[3]}
        return out


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _require_exporter() -> None:
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"ONNX export needs {', '.join(missing)}: pip install 'simvg[onnx]'")


def write_onnx_checkpoint(directory: str | Path, model: nn.Module, config, backbone_config: dict, tokenizer,
                          meta: dict, decoder: bool = False, int8: bool = False) -> dict:  # fmt: skip
    """Write an ONNX checkpoint directory atomically: config.json (the model's config and
    ``meta``, plus an ``onnx`` entry), the tokenizer files, model.onnx [and model.int8.onnx].
    Returns the ``onnx`` entry (opset, branches, files, checked box difference)."""
    from simvg.config import to_dict
    from simvg.engine.checkpoint import (
        CONFIG_FILE,
        FORMAT_VERSION,
        portable_backbone_config,
        write_atomically,
    )
    from simvg.models.pretrained import save_tokenizer

    _require_exporter()
    if decoder and not config.model.head.use_decoder:
        raise ValueError("this model has no decoder branch (head.use_decoder is false); export without --decoder")
    info: dict = {}

    def write(tmp: Path) -> None:
        worst = _export_in_subprocess(model, config, backbone_config, tokenizer, tmp / ONNX_FILE, decoder,
                                      {"simvg_format_version": str(FORMAT_VERSION)})  # fmt: skip
        files = [ONNX_FILE]
        if int8:
            quantize_graph(tmp / ONNX_FILE, tmp / ONNX_INT8_FILE)
            files.append(ONNX_INT8_FILE)
        info.update({"opset": ONNX_OPSET, "branches": ["token", "decoder"] if decoder else ["token"], "files": files,
                     "checked_box_difference_px": round(worst, 4)})  # fmt: skip
        kept = {k: v for k, v in meta.items() if k not in ("config", "backbone_config", "vocab_size", "format_version", "onnx")}
        backbone = portable_backbone_config(backbone_config, config.model.encoder.pretrained)
        data = {"format_version": FORMAT_VERSION, "config": to_dict(config), "backbone_config": backbone,
                "vocab_size": len(tokenizer), **kept, "onnx": info}  # fmt: skip
        (tmp / CONFIG_FILE).write_text(json.dumps(data, indent=2, sort_keys=True))
        save_tokenizer(tokenizer, tmp)

    write_atomically(Path(directory), write)
    return info


def onnx_file(directory: Path, quantize: str | None) -> Path:
    """The graph of an ONNX checkpoint directory to run: model.onnx, or model.int8.onnx for
    ``quantize="int8"``."""
    if quantize not in (None, "int8"):
        raise ValueError(f"unknown quantization '{quantize}' for the onnxruntime backend; choose int8 or none")
    path = directory / (ONNX_INT8_FILE if quantize == "int8" else ONNX_FILE)
    if not path.is_file():
        hint = " (export with --int8 to write it)" if quantize == "int8" else ""
        raise FileNotFoundError(f"checkpoint {directory} has no {path.name}{hint}")
    return path



def _export_in_subprocess(model: nn.Module, config, backbone_config: dict, tokenizer, path: Path, decoder: bool,
                          metadata: dict[str, str]) -> float:  # fmt: skip
    """:func:`export_graph` in a fresh Python process, from a temporary checkpoint of ``model``.

    The exporter changes process-wide state (torch 2.14 patches decompositions while it
    runs: a second export in one process traced the GRU differently from the first) and
    tracing may fill the model's caches of constants with its placeholder tensors: a process
    of its own keeps every export alike and the caller's model untouched."""
    import subprocess
    import sys

    from simvg.engine.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory(prefix="simvg-export-") as tmp:
        source = Path(tmp) / "checkpoint"
        save_checkpoint(source, model, config, backbone_config, tokenizer)
        package_root = str(Path(__file__).resolve().parents[1])  # the child imports this same simvg
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "simvg.onnx_backend", str(source), str(path), json.dumps(metadata)]
        if decoder:
            command.append("--decoder")
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        # The exporter's own summary ("<class '...'>: message") or the error's last line.
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        causes = [line for line in lines if line.startswith("<class '")] or [line for line in lines if "Error" in line]
        raise ValueError(f"ONNX export failed: {(causes or lines or [f'exit code {done.returncode}'])[-1]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["box_difference_px"])


def _export_main(argv: list[str]) -> None:
    """``python -m simvg.onnx_backend CHECKPOINT GRAPH METADATA_JSON [--decoder]``: what
    :func:`_export_in_subprocess` runs."""
    from simvg.engine.checkpoint import load_checkpoint

    decoder = "--decoder" in argv
    source, path, metadata = [arg for arg in argv if arg != "--decoder"]
    model, tokenizer, config, _ = load_checkpoint(source)
    worst = export_graph(model, path, config.model.image_size, config.model.max_text_length, len(tokenizer), decoder,
                         json.loads(metadata))  # fmt: skip
    print(json.dumps({"box_difference_px": worst}))


if __name__ == "__main__":
    import sys

    _export_main(sys.argv[1:])
