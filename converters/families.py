"""Checkpoint families: how each one's files are laid out, read and written.

| family    | on disk                                                        | names          |
|-----------|----------------------------------------------------------------|----------------|
| openai    | OpenAI's TorchScript `.pt` archive or a plain state_dict       | OpenAI         |
| open_clip | `.pt`/`.bin`/`.safetensors` (optionally `module.`-prefixed), or | OpenAI         |
|           | a folder with `open_clip_config.json` + `open_clip_model.*`     |                |
| hf        | folder: `config.json` + `model.safetensors`/`pytorch_model.bin` | Hugging Face   |
| degla     | `{"epoch", "name", "state_dict": {"module.…"}, "optimizer", …}` | OpenAI         |
| flax      | folder: `vlalign_config.json` + orbax `params/`                 | ours           |
| fgclip    | FG-CLIP 1 Hugging Face remote-code folder                       | Hugging Face   |
| clipvg    | CLIP-VG `{"model": state_dict, "epoch", "args", ...}` `.pth`      | CLIP-VG        |
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import ml_dtypes
import numpy as np
from flax import traverse_util

from vlalign_jax.converters import clip_hf, clip_openai
from vlalign_jax.converters.table import check_arrays, expand, flat_shapes, from_theirs, to_theirs
from vlalign_jax.converters.torch_io import (CheckpointFormatError, TORCH_SUFFIXES, atomic_dir, is_torchscript,
                                             load_safetensors, load_torch_object, read_json, save_state_dict,
                                             tensors_to_numpy)
from vlalign_jax.models.clip import ClipConfig, abstract_params

log = logging.getLogger(__name__)

FAMILIES = ("openai", "open_clip", "hf", "degla", "flax", "fgclip", "clipvg")
DTYPES = {"fp32": np.float32, "bf16": ml_dtypes.bfloat16, "fp16": np.float16}
FLAX_CONFIG = "vlalign_config.json"
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A model in neutral form: architecture, flat `{path: array}` params, and carried metadata."""

    config: ClipConfig
    params: dict[str, np.ndarray]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def nested_params(self) -> dict:
        return traverse_util.unflatten_dict(self.params, sep="/")

    def cast(self, dtype: Any) -> "Checkpoint":
        return dataclasses.replace(self, params={k: v.astype(dtype) for k, v in self.params.items()})


def param_shapes(config: ClipConfig) -> dict[str, tuple[int, ...]]:
    """Our flat `{path: shape}` for `config` (cached: `table.flat_shapes`)."""
    return flat_shapes(abstract_params, config)


def detect_family(path: Path) -> str:
    """Guess the family from a path's contents; the error names the families that exist."""
    path = Path(path)
    if path.is_dir():
        if (path / FLAX_CONFIG).exists():
            return "flax"
        if (path / OPEN_CLIP_CONFIG).exists() or any((path / w).exists() for w in OPEN_CLIP_WEIGHTS):
            return "open_clip"
        if (path / "config.json").exists():
            from vlalign_jax.converters import fgclip_hf

            return "fgclip" if fgclip_hf.is_fgclip_folder(path) else "hf"
    elif path.is_file():
        if is_torchscript(path):
            return "openai"
        if path.suffix == ".safetensors":
            return "open_clip"
        if path.suffix in TORCH_SUFFIXES:
            from vlalign_jax.converters import clipvg

            if clipvg.is_clipvg_file(path):
                return "clipvg"
            obj = load_torch_object(path)
            if isinstance(obj, Mapping) and "state_dict" in obj and "epoch" in obj:
                return "degla"
            return "open_clip"
    elif not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    raise CheckpointFormatError(f"cannot tell which family {path} belongs to; pass one of {FAMILIES}")


# ---- reading --------------------------------------------------------------------------------------

def _openai_names_to_checkpoint(state: Mapping[str, np.ndarray], act: str, source: str,
                                meta: dict | None = None, heads: tuple[int | None, int | None] = (None, None)
                                ) -> Checkpoint:
    state = clip_openai.strip_prefix(state)
    for key in clip_openai.DERIVED_KEYS:
        state.pop(key, None)
    config = clip_openai.infer_config(state, act, source, *heads)
    rules = expand(clip_openai.rules_for(config), clip_openai.layer_counts(config))
    return Checkpoint(config, from_theirs(state, rules, param_shapes(config), source), meta or {})


def _torch_state(path: Path, obj: Any = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A state_dict from a torch file, unwrapping a training checkpoint's `state_dict` entry."""
    obj = load_torch_object(path) if obj is None else obj
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    if "state_dict" in obj:
        extras = {k: obj[k] for k in ("epoch", "name") if k in obj}
        return tensors_to_numpy(obj["state_dict"], path), extras
    return tensors_to_numpy(obj, path), {}


def read_openai(path: Path, act: str | None) -> Checkpoint:
    state, _ = _torch_state(path)
    return _openai_names_to_checkpoint(state, act or "quick_gelu", str(path))


def _open_clip_heads(model_cfg: Mapping[str, Any], state: Mapping[str, np.ndarray], source: str) -> tuple[int, int]:
    """(vision, text) head counts from an open_clip model config, with open_clip's defaults for what
    it leaves out (vision head_width 64, text heads 8); a mistyped field is an error naming it."""
    vision, text = (clip_hf.sub_config(model_cfg, name, {}, source) for name in ("vision_cfg", "text_cfg"))
    conv1 = np.shape(clip_openai.strip_prefix(state).get("visual.conv1.weight", ()))
    width = vision.get("width") or (conv1[0] if conv1 else 1)  # a missing or 0-d conv1 is named by infer_config
    fields = {"vision_cfg.width": width, "vision_cfg.head_width": vision.get("head_width", 64),
              "text_cfg.heads": text.get("heads", 8)}
    clip_hf.require_positive_ints(fields, fields, source)
    return max(width // fields["vision_cfg.head_width"], 1), fields["text_cfg.heads"]


def read_open_clip(path: Path, act: str | None) -> Checkpoint:
    model_cfg = None
    if path.is_dir():
        weights = next((path / w for w in OPEN_CLIP_WEIGHTS if (path / w).exists()), None)
        if weights is None:
            raise CheckpointFormatError(f"{path} has none of {OPEN_CLIP_WEIGHTS}")
        if (path / OPEN_CLIP_CONFIG).exists():
            model_cfg = clip_hf.sub_config(read_json(path / OPEN_CLIP_CONFIG), "model_cfg", {},
                                           str(path / OPEN_CLIP_CONFIG))
            if act is None:
                act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
        path = weights
    if act is None:
        log.warning("%s does not record its activation; assuming open_clip's default GELU. "
                    "Pass act='quick_gelu' (--act quick_gelu) for OpenAI-trained weights.", path)
        act = "gelu"
    state = load_safetensors(path) if path.suffix == ".safetensors" else _torch_state(path)[0]
    if model_cfg is None:
        log.info("%s has no %s beside it: attention heads assumed width // 64 in both towers (true of OpenAI's "
                 "models, not of every open_clip one, e.g. ViT-H-14)", path, OPEN_CLIP_CONFIG)
        return _openai_names_to_checkpoint(state, act, str(path))
    heads = _open_clip_heads(model_cfg, state, str(path.parent / OPEN_CLIP_CONFIG))
    return _openai_names_to_checkpoint(state, act, str(path), heads=heads)


def read_degla(path: Path, act: str | None) -> Checkpoint:
    obj = load_torch_object(path)
    if not (isinstance(obj, Mapping) and "state_dict" in obj):
        raise CheckpointFormatError(f"{path} is not a DeGLA checkpoint: expected a dict with a 'state_dict' entry")
    state, extras = _torch_state(path, obj)
    # DeGLA fine-tunes OpenAI's ViT-B/32, which uses QuickGELU.
    return _openai_names_to_checkpoint(state, act or "quick_gelu", str(path), meta={"degla": extras})


def read_hf(path: Path, act: str | None) -> Checkpoint:
    if not (path / "config.json").exists():
        raise CheckpointFormatError(f"{path}: a Hugging Face checkpoint is a folder with config.json")
    raw = read_json(path / "config.json")
    if raw.get("model_type") == "fgclip2":
        from vlalign_jax.converters import fgclip2_hf

        return fgclip2_hf.read(path, act)
    if raw.get("model_type") == "siglip2":
        from vlalign_jax.converters import siglip2_hf

        return siglip2_hf.read_siglip2_hf(path, act)
    config = clip_hf.config_from_json(raw, str(path / "config.json"))
    if act is not None and act != config.act:
        raise ValueError(f"{path}/config.json says hidden_act={config.act!r}, but act={act!r} was requested")
    state = _hf_weights(path)
    for key in clip_hf.BUFFER_KEYS:
        state.pop(key, None)
    rules = expand(clip_hf.RULES, clip_openai.layer_counts(config))
    return Checkpoint(config, from_theirs(state, rules, param_shapes(config), str(path)))


def _hf_weights(path: Path) -> dict[str, np.ndarray]:
    for index_name, reader in (("model.safetensors.index.json", load_safetensors),
                               ("pytorch_model.bin.index.json", lambda p: _torch_state(p)[0])):
        if (path / index_name).exists():
            shards = sorted(set(read_json(path / index_name)["weight_map"].values()))
            return {k: v for shard in shards for k, v in reader(path / shard).items()}
    if (path / "model.safetensors").exists():
        return load_safetensors(path / "model.safetensors")
    if (path / "pytorch_model.bin").exists():
        return _torch_state(path / "pytorch_model.bin")[0]
    raise CheckpointFormatError(f"{path} has config.json but no model.safetensors or pytorch_model.bin")


def read_flax(path: Path, act: str | None) -> Checkpoint:
    import orbax.checkpoint as ocp

    info = json.loads((path / FLAX_CONFIG).read_text())
    config = config_from_dict(info.get("model", "clip"), info["config"])
    restored = ocp.StandardCheckpointer().restore((path / "params").absolute())
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(restored, sep="/").items()}
    check_arrays(flat, model_param_shapes(config), str(path))
    return Checkpoint(config, flat, info.get("meta", {}))


def _read_fgclip(path: Path, act: str | None) -> Checkpoint:
    from vlalign_jax.converters import fgclip_hf

    return fgclip_hf.read(path, act)


def _read_clipvg(path: Path, act: str | None, trust_pickle: bool = False) -> Checkpoint:
    from vlalign_jax.converters import clipvg

    state, meta = clipvg.load_state(path, trusted=trust_pickle)
    config, params = clipvg.params_from_state(state, None, meta.get("args"), str(path), np.float32)
    return Checkpoint(config, params, {k: v for k, v in meta.items() if k == "epoch"})


# Families whose released files pickle Python objects besides tensors (CLIP-VG's argparse `args`): their
# readers take `trust_pickle`, which lets torch unpickle anything (runs the file's code: trusted files only).
PICKLING_FAMILIES = ("clipvg",)

READERS: dict[str, Callable[..., Checkpoint]] = {
    "openai": read_openai, "open_clip": read_open_clip, "hf": read_hf, "degla": read_degla, "flax": read_flax,
    "fgclip": _read_fgclip, "clipvg": _read_clipvg,
}


# ---- writing --------------------------------------------------------------------------------------

def _require_clip(ckpt: Checkpoint, family: str) -> None:
    kind = model_kind(ckpt.config)
    if kind != "clip":
        raise ValueError(f"a {kind} model cannot be written as {family!r}: that layout holds CLIP weights only; "
                         f"write it as {'fgclip or flax' if kind == 'fgclip' else 'hf or flax'}")


def _openai_state(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    rules = expand(clip_openai.rules_for(ckpt.config), clip_openai.layer_counts(ckpt.config))
    return to_theirs(ckpt.params, rules, param_shapes(ckpt.config), "params")


def write_openai(ckpt: Checkpoint, path: Path, overwrite: bool) -> None:
    _require_clip(ckpt, "openai")
    save_state_dict(_openai_state(ckpt), path, overwrite=overwrite)


def write_open_clip(ckpt: Checkpoint, path: Path, overwrite: bool) -> None:
    _require_clip(ckpt, "open_clip")
    state = _openai_state(ckpt)
    if path.suffix:
        save_state_dict(state, path, overwrite=overwrite)
        return
    cfg = ckpt.config
    model_cfg = {"embed_dim": cfg.embed_dim, "quick_gelu": cfg.act == "quick_gelu",
                 "vision_cfg": {"image_size": cfg.vision.image_size, "patch_size": cfg.vision.patch_size,
                                "width": cfg.vision.width, "layers": cfg.vision.layers,
                                "mlp_ratio": cfg.vision.mlp_dim / cfg.vision.width,
                                "head_width": cfg.vision.width // cfg.vision.heads},
                 "text_cfg": {"context_length": cfg.text.context_length, "vocab_size": cfg.text.vocab_size,
                              "width": cfg.text.width, "heads": cfg.text.heads, "layers": cfg.text.layers,
                              "mlp_ratio": cfg.text.mlp_dim / cfg.text.width}}
    with atomic_dir(path, overwrite) as tmp:
        save_state_dict(state, tmp / OPEN_CLIP_WEIGHTS[0])
        (tmp / OPEN_CLIP_CONFIG).write_text(json.dumps({"model_cfg": model_cfg}, indent=2))


def write_degla(ckpt: Checkpoint, path: Path, overwrite: bool) -> None:
    _require_clip(ckpt, "degla")
    state = {f"module.{k}": v for k, v in _openai_state(ckpt).items()}
    extras = {"epoch": 0, "name": "vlalign-jax-export", **ckpt.meta.get("degla", {})}
    save_state_dict(state, path, extra=extras, nest_under="state_dict", overwrite=overwrite)


def write_hf(ckpt: Checkpoint, path: Path, overwrite: bool) -> None:
    if model_kind(ckpt.config) == "fgclip2":
        from vlalign_jax.converters import fgclip2_hf

        fgclip2_hf.write(ckpt, path, overwrite)
        return
    if model_kind(ckpt.config) == "siglip2":
        from vlalign_jax.converters import siglip2_hf

        siglip2_hf.write_siglip2_hf(ckpt, path, overwrite)
        return
    _require_clip(ckpt, "hf")
    if ckpt.config.logit_bias_init is not None:
        raise ValueError("Hugging Face CLIPModel has no logit_bias; write this model as open_clip or flax")
    rules = expand(clip_hf.RULES, clip_openai.layer_counts(ckpt.config))
    state = to_theirs(ckpt.params, rules, param_shapes(ckpt.config), "params")
    dtype_name = str(next(iter(state.values())).dtype)  # float32, bfloat16 or float16
    with atomic_dir(path, overwrite) as tmp:
        save_state_dict(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(clip_hf.config_to_json(ckpt.config, dtype_name), indent=2))


def write_flax(ckpt: Checkpoint, path: Path, overwrite: bool) -> None:
    import orbax.checkpoint as ocp

    with atomic_dir(path, overwrite) as tmp:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save((tmp / "params").absolute(), ckpt.nested_params())
        checkpointer.wait_until_finished()
        info = {"format": "vlalign-jax", "version": 1, "model": model_kind(ckpt.config), "config": ckpt.config.to_dict(),
                "meta": ckpt.meta}
        (tmp / FLAX_CONFIG).write_text(json.dumps(info, indent=2))


def _write_fgclip(ckpt: Checkpoint, path: Path, overwrite: bool) -> None:
    from vlalign_jax.converters import fgclip_hf

    fgclip_hf.write(ckpt, path, overwrite)


def _write_clipvg(ckpt: Checkpoint, path: Path, overwrite: bool) -> None:
    from vlalign_jax.converters import clipvg

    if model_kind(ckpt.config) != "clipvg":
        raise ValueError(f"a {model_kind(ckpt.config)} model cannot be written as 'clipvg': that layout holds "
                         "CLIP-VG grounding models only")
    clipvg.write_clipvg(ckpt.config, ckpt.params, path, int(ckpt.meta.get("epoch", 0)), overwrite=overwrite)


WRITERS: dict[str, Callable[[Checkpoint, Path, bool], None]] = {
    "openai": write_openai, "open_clip": write_open_clip, "hf": write_hf, "degla": write_degla,
    "flax": write_flax, "fgclip": _write_fgclip, "clipvg": _write_clipvg,
}


def model_kind(config: Any) -> str:
    """"fgclip" (FG-CLIP 1), "fgclip2" (FG-CLIP 2), "siglip2" (SigLIP 2 NaFlex), "clipvg" (CLIP-VG) or "clip"."""
    from vlalign_jax.models.fgclip import FgClipConfig
    from vlalign_jax.models.fgclip2 import Fgclip2Config
    from vlalign_jax.models.grounding import GroundingConfig
    from vlalign_jax.models.siglip import SiglipConfig

    if isinstance(config, GroundingConfig):
        return "clipvg"
    if isinstance(config, Fgclip2Config):
        return "fgclip2"
    if isinstance(config, SiglipConfig):
        return "siglip2"
    return "fgclip" if isinstance(config, FgClipConfig) else "clip"


# The converter module holding each non-CLIP kind's table (its `param_shapes`).
_KIND_MODULES = {"fgclip": "fgclip_hf", "siglip2": "siglip2_hf", "fgclip2": "fgclip2_hf", "clipvg": "clipvg"}


def config_from_dict(kind: str, d: Mapping[str, Any]) -> Any:
    """The architecture saved under `kind` (a `model_kind` name): our flax format, a run's model.json."""
    from vlalign_jax.models.fgclip import FgClipConfig
    from vlalign_jax.models.fgclip2 import Fgclip2Config
    from vlalign_jax.models.grounding import GroundingConfig
    from vlalign_jax.models.siglip import SiglipConfig

    classes = {"clip": ClipConfig, "fgclip": FgClipConfig, "siglip2": SiglipConfig, "fgclip2": Fgclip2Config,
               "clipvg": GroundingConfig}
    if kind not in classes:
        raise ValueError(f"unknown model kind {kind!r}; kinds: {', '.join(classes)}")
    return classes[kind].from_dict(d)


def model_param_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Flat parameter shapes of any model kind."""
    kind = model_kind(config)
    if kind == "clip":
        return param_shapes(config)
    return importlib.import_module(f"vlalign_jax.converters.{_KIND_MODULES[kind]}").param_shapes(config)


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown checkpoint family {family!r}; families: {', '.join(FAMILIES)}")
    return family
