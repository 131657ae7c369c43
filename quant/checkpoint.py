"""The quantized checkpoint folder: write it atomically, read it back with every field checked.

A folder `quant` writes holds:
- `model.safetensors`: the quantized Transformer's tensors. INT8 layers as `<name>.weight_q`
  (int8 [out, in]) and `<name>.scale` (float16 [out, in/g] in groups of g, or float32 [out]
  per row: format version 1 wrote only these); INT4 layers as `<name>.weight_packed`
  (uint8 [out, in/2], two codes a byte, low nibble first), `<name>.scale` and `<name>.minimum`
  (float16 [out, groups], as in GGML's Q4_1); the token table as `tok_embeddings.weight_q/scale`; RMSNorm scales in
  float32; the RoPE inverse frequencies as `rope.inv_freq`. A tied head is stored once.
- `model_args.json`: the `engine.model.config.ModelArgs` fields.
- the text side, in the source's own form: from a GGUF source, `tokenizer_metadata.json` (the
  vocabulary, merges, special ids and chat template, as GGUF metadata keys: the engine's
  tokenizer and template read exactly these); from a Hugging Face folder, copies of its
  tokenizer files (`engine.text.hf_text.TEXT_FILES`: tokenizer.json or tokenizer.model,
  tokenizer_config.json, generation_config.json, ...), read by `engine.text.hf_text`.
- `quantization.json`: what was done, tensor by tensor: scheme, group size and rounding of each
  quantized tensor, which stayed float and why, the source file and its sha256, the tool and
  torch versions. The loader trusts this file, never the folder or file names, for the scheme.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from engine import ModelFormatError
from engine.model import ModelArgs, RopeScaling

from .output import FORMAT, QUANTIZATION, check_output_folder, swap_in, temporary_folder

FORMAT_VERSION = 2  # 2: INT8 scales may be per group
READABLE_VERSIONS = (1, 2)
WEIGHTS, ARGS, TOKENIZER = "model.safetensors", "model_args.json", "tokenizer_metadata.json"
TOKENIZER_KEY_PREFIXES = ("tokenizer.",)


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chatapp")
    except PackageNotFoundError:
        return "unknown"


def sha256_of(path: Path) -> str:
    """The file's sha256, remembered as `chatapp pull` remembers it (engine.hub.download): quantizing the
    same multi-GB source again does not read it twice."""
    from engine.hub import file_sha256

    return file_sha256(Path(path))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _state_for_saving(model: torch.nn.Module, tied: bool) -> dict[str, torch.Tensor]:
    state = {}
    for name, tensor in model.state_dict().items():
        if tied and name.startswith("output."):
            continue  # the same tensors as tok_embeddings.*
        state[name] = tensor.detach().to("cpu").contiguous()
    state["rope.inv_freq"] = model.inv_freq.detach().float().cpu().contiguous()
    return state


def save_checkpoint(
    out_dir: Path,
    model: torch.nn.Module,
    metadata: dict,
    report: dict,
    source: dict,
    *,
    force: bool = False,
    calibration: dict | None = None,
    extra_files: dict[str, Path] | None = None,
    text_folder: Path | None = None,
) -> Path:
    """Write the folder into a temporary sibling, then rename it into place.

    An interrupted run leaves at most a hidden `.<name>.tmp-<pid>-*` folder that holds no
    `quantization.json` until the very end, so nothing that looks like a model (quant/output.py:
    the next run removes it). With `force`, an existing folder (quant's own) is swapped out only
    after the new one is complete. A write that fails (a full disk) is one OSError line, and
    leaves nothing behind. `text_folder`: a
    Hugging Face source folder whose tokenizer files are copied (else `metadata`'s tokenizer
    keys are written).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from engine.text import TEXT_FILES

    out_dir = Path(out_dir)
    check_output_folder(out_dir, force=force)
    args: ModelArgs = model.args
    tmp = temporary_folder(out_dir)
    try:
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes 0700: the finished model is an ordinary folder
        save_file(_state_for_saving(model, report["tied_output"]), str(tmp / WEIGHTS), metadata={"format": FORMAT})
        _write_json(tmp / ARGS, {"architecture": "llama", **asdict(args)})
        if text_folder is not None:
            text_files = [name for name in TEXT_FILES if (Path(text_folder) / name).is_file()]
            for name in text_files:
                shutil.copyfile(Path(text_folder) / name, tmp / name)
        else:
            text_files = [TOKENIZER]
            _write_json(tmp / TOKENIZER, {k: v for k, v in metadata.items() if k.startswith(TOKENIZER_KEY_PREFIXES)})
        for name, file in (extra_files or {}).items():  # e.g. the GGUF export, moved in whole
            os.replace(file, tmp / name)
        _write_json(tmp / QUANTIZATION, {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "scheme": report["scheme"],
            "group_size": report["group_size"],
            "tied_output": report["tied_output"],
            "quantized": report["quantized"],
            "kept_float": report["kept_float"],
            "calibration": calibration,
            "files": sorted([WEIGHTS, ARGS, *text_files, *(extra_files or {})]),
            "text_side": "gguf metadata" if text_folder is None else "hugging face tokenizer files",
            "source": source,
            "tool": {"name": "quant", "version": tool_version()},
            "torch": torch.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })  # written last: a folder without it is not a model
        for file in tmp.iterdir():  # safetensors writes 0600, whatever the umask
            os.chmod(file, umask_mode(0o666))
        _fsync_folder(tmp)
        swap_in(tmp, out_dir)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # safetensors reports a full disk as SafetensorError("... IoError(Os { code: 28 ... })")
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        reason = m.group(1) if (m := re.search(r'message: "([^"]+)"', reason)) else reason
        raise OSError(f"could not write {out_dir}: {reason}; nothing was written (free some space or "
                      f"choose another --out)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def umask_mode(mode: int) -> int:
    """`mode` less the process umask: what open() and mkdir() would have given (0o644 files and
    0o755 folders under the usual 022), for files that tempfile creates private."""
    umask = os.umask(0)  # the only way to read it; set back at once
    os.umask(umask)
    return mode & ~umask


def _write_json(path: Path, data) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())


def _fsync_folder(path: Path) -> None:
    for p in path.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def read_quantization(path: Path) -> dict:
    """quantization.json, checked: the format, its version, the scheme and the per-tensor map."""
    file = Path(path) / QUANTIZATION
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"{file}: cannot read it ({type(e).__name__}: {e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ModelFormatError(f"{file}: not a {FORMAT} checkpoint")
    if info.get("format_version") not in READABLE_VERSIONS:
        raise ModelFormatError(f"{file}: format version {info.get('format_version')!r}; this build reads "
                               f"{', '.join(map(str, READABLE_VERSIONS))}")
    if info.get("scheme") not in ("int8", "int4") or not isinstance(info.get("quantized"), dict):
        raise ModelFormatError(f"{file}: unknown scheme {info.get('scheme')!r} or no tensor map")
    return info


def _read_args(path: Path) -> ModelArgs:
    file = path / ARGS
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        if raw.pop("architecture", None) != "llama":
            raise ValueError("architecture is not 'llama'")
        scaling = raw.pop("rope_scaling", None)
        full_layers = tuple(raw.pop("full_attention_layers", ()))  # a JSON list
        no_rope = tuple(raw.pop("no_rope_layers", ()))  # a JSON list
        return ModelArgs(**raw, rope_scaling=RopeScaling(**scaling) if scaling else None, full_attention_layers=full_layers,
                         no_rope_layers=no_rope)
    except ModelFormatError:
        raise
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ModelFormatError(f"{file}: not a valid model config ({type(e).__name__}: {e})") from None


def int8_scale_shape(entry: dict, rows: int, width: int) -> tuple[int, ...]:
    """The scale shape an INT8 tensor's quantization.json entry promises: [rows, width/g] or [rows]."""
    g = entry.get("group_size")
    if g is None:
        return (rows,)
    if not isinstance(g, int) or g <= 0 or width % g:
        raise ValueError(f"INT8 group size {g!r} does not divide the width {width}")
    return (rows, width // g)


def load_checkpoint(path: Path, *, name: str | None = None, device=None, dtype=None, context_length: int | None = None):
    """Read a folder `save_checkpoint` wrote into a NativeModel (the entry point engine.load uses)."""
    from safetensors import SafetensorError, safe_open

    from engine.formats import generation_defaults
    from engine.model import Transformer, pick_device, pick_dtype
    from engine.runtime import NativeModel

    from .cpu_kernel import KERNEL_DTYPES, CPUQuantLinear
    from .cuda_kernel import CUDAQuantLinear
    from .linear import Int4Linear, Int8Embedding, Int8Linear, int8_scale_dtype

    path = Path(path)
    info = read_quantization(path)
    args = _read_args(path)
    metadata, text_side = None, None
    if info.get("text_side") == "hugging face tokenizer files":
        from engine.text import load_hf_text_side

        text_side = load_hf_text_side(path)
    else:
        try:
            metadata = json.loads((path / TOKENIZER).read_text(encoding="utf-8"))
            if not isinstance(metadata, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ModelFormatError(f"{path / TOKENIZER}: cannot read it ({type(e).__name__}: {e})") from None
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    try:
        # Tensor by tensor, not the whole file at once: with each layer packed as it is read
        # (below), loading never holds much more than the finished model.
        weights = safe_open(str(path / WEIGHTS), framework="pt", device="cpu")
        state = set(weights.keys())
    except (OSError, SafetensorError) as e:
        raise ModelFormatError(f"{path / WEIGHTS}: not a readable safetensors file ({e})") from None
    # The kernel's layout replaces the stored form, converted once here: on CPU for 16-bit
    # activations, on CUDA for bfloat16 (tinygemm's dtype; quant/cuda_kernel.py).
    pack = device.type == "cpu" and dtype in KERNEL_DTYPES
    pack_cuda = device.type == "cuda" and dtype == torch.bfloat16

    def placed(layer: Int8Linear | Int4Linear) -> torch.nn.Module:
        if pack_cuda:
            packed = layer.packed_for_cuda()
        elif pack:
            packed = layer.packed_for_cpu(dtype)
        else:
            return layer
        return layer if packed is None else packed

    def take(key: str, dtype_: torch.dtype, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        if key not in state:
            raise ModelFormatError(f"{path / WEIGHTS}: tensor {key!r} is missing")
        state.discard(key)
        try:
            t = weights.get_tensor(key)
        except (OSError, SafetensorError) as e:
            raise ModelFormatError(f"{path / WEIGHTS}: tensor {key!r} cannot be read ({e})") from None
        if t.dtype != dtype_ or (shape is not None and tuple(t.shape) != shape):
            raise ModelFormatError(f"{path / WEIGHTS}: tensor {key!r} is {t.dtype} {tuple(t.shape)}, "
                                   f"expected {dtype_} {shape if shape is not None else ''}")
        # A fresh copy: tensors safetensors maps straight from the file sit at arbitrary byte
        # offsets, and PyTorch's INT8/INT4 CPU kernels crash on unaligned weights.
        return t.to(device, copy=True)

    model = Transformer.empty(args, take("rope.inv_freq", torch.float32, (args.rope_dim // 2,)))
    try:
        for full, entry in info["quantized"].items():
            module_name = full.removesuffix(".weight")
            if module_name == "tok_embeddings":
                q = take("tok_embeddings.weight_q", torch.int8, (args.vocab_size, args.dim))
                shape = int8_scale_shape(entry, args.vocab_size, args.dim)
                table = Int8Embedding(q, take("tok_embeddings.scale", int8_scale_dtype(shape), shape), dtype)
                model.tok_embeddings = table
                if info["tied_output"]:
                    model.output = placed(Int8Linear(table.weight_q, table.scale))
                continue
            parent_name, attr = module_name.rsplit(".", 1) if "." in module_name else ("", module_name)
            parent = model.get_submodule(parent_name)
            old = getattr(parent, attr, None)
            if not isinstance(old, torch.nn.Linear):
                raise ModelFormatError(f"{path / QUANTIZATION}: {full!r} is not a linear layer of this model")
            out, inp = old.out_features, old.in_features
            bias = None if old.bias is None else take(f"{module_name}.bias", torch.float32, (out,))  # Qwen2's wqkv
            if entry.get("scheme") == "int8":
                shape = int8_scale_shape(entry, out, inp)
                new = Int8Linear(take(f"{module_name}.weight_q", torch.int8, (out, inp)),
                                 take(f"{module_name}.scale", int8_scale_dtype(shape), shape), bias)
            elif entry.get("scheme") == "int4":
                g = entry.get("group_size")
                if not isinstance(g, int) or g <= 0 or inp % g:
                    raise ModelFormatError(f"{path / QUANTIZATION}: {full!r} has group size {g!r}, which does not divide {inp}")
                new = Int4Linear(take(f"{module_name}.weight_packed", torch.uint8, (out, inp // 2)),
                                 take(f"{module_name}.scale", torch.float16, (out, inp // g)),
                                 take(f"{module_name}.minimum", torch.float16, (out, inp // g)), bias)
            else:
                raise ModelFormatError(f"{path / QUANTIZATION}: {full!r} has unknown scheme {entry.get('scheme')!r}")
            setattr(parent, attr, placed(new))
        floats = {}
        for pname, param in model.named_parameters():
            floats[pname] = take(pname, torch.float32, tuple(param.shape))
    except ValueError as e:  # a quantized module refused its tensors
        raise ModelFormatError(f"{path}: {e}") from None
    if state:
        raise ModelFormatError(f"{path / WEIGHTS}: unexpected tensors {sorted(state)[:3]}")
    model.load_state_dict(floats, assign=True, strict=False)
    if info["tied_output"] is False and not isinstance(model.output, (Int8Linear, CPUQuantLinear, CUDAQuantLinear)):
        raise ModelFormatError(f"{path / QUANTIZATION}: the model has an untied head but the checkpoint has none")
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise ModelFormatError(f"{path}: no weights for {meta[:3]}")
    model = model.eval().requires_grad_(False)
    loaded = NativeModel.from_transformer(model, metadata, path=path, name=name, device=device, dtype=dtype,
                                          context_length=context_length, text_side=text_side)
    # A folder quantized from a Hugging Face checkpoint carries its generation_config.json.
    loaded.sampling_defaults = generation_defaults(Path(path))
    return loaded
