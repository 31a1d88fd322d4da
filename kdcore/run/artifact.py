"""The student a run ships, as a folder others can open: `save_student` writes it, `load_student` reads it.

Two forms, chosen by the reverted model itself:
- standard: a reverted model with `save_pretrained` (the llama student's is a transformers
  `LlamaForCausalLM`) writes its own folder: config.json with `model_type`, model.safetensors,
  generation_config.json, plus the teacher's tokenizer files, so `AutoModelForCausalLM` and
  `AutoTokenizer` load it with no LlamaKD installed.
- generic: any other reverted nn.Module goes to model.safetensors plus a config.json that names the
  student plugin, its parameters, the plugin modules and the package (and version) that provides
  it; `load_student` rebuilds the architecture through the registry (as a third-party student is
  built) and loads the weights, or says which package to install.
Either form holds the teacher's tokenizer files, and every file has the user's usual permissions.

Evaluation measures what `load_student` returns, so what is evaluated is what the user gets.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch

from kdcore.plugin.calls import plugin_code
from kdcore.plugin.contracts import BuildContext
from kdcore.plugin.data import last_positions
from kdcore.plugin.registry import load_registry
from kdcore.problems import KDError
from kdcore.system.files import usual_permissions

GENERIC_KEY = "llamakd_student"  # config.json of a generic folder: {GENERIC_KEY: {...}}
GENERIC_FORMAT = 1


class CausalLMStudent(torch.nn.Module):
    """A transformers causal LM seen through the reverted-student contract: logits for (ids,
    lengths), greedy decoding with its KV cache, and its own `save_pretrained`."""

    positions = ("last", "all")
    max_seq_len = None  # a causal LM reads any length

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, positions: str = "last") -> torch.Tensor:
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        logits = self.model(input_ids=ids, attention_mask=mask.long()).logits
        return logits if positions == "all" else last_positions(logits, lengths)

    @torch.inference_mode()
    def generate(self, ids: Sequence[int], steps: int) -> list[int]:
        """Greedy continuation, exactly what `model.generate(ids, max_new_tokens=steps,
        do_sample=False)` gives a user of the saved folder."""
        if steps == 0:
            return []
        x = torch.tensor([list(ids)], device=self.model.device)
        out = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=steps, do_sample=False)
        return out[0, x.shape[1]:].tolist()

    def save_pretrained(self, directory: Path) -> None:
        from transformers.utils import logging

        logging.disable_progress_bar()  # a few MB: no bar of its own beside ours
        self.model.save_pretrained(directory)


# --- saving ---------------------------------------------------------------------------------------


def plugin_refs(spec) -> list[str]:
    """The spec's plugin modules as a generic folder records them: .py files by absolute path, module
    names as given (with the spec's folder, where a module beside the spec is found, after a '@')."""
    base = Path(spec.base_dir).resolve()
    return [str((base / p).resolve()) if p.endswith(".py") else f"{p}@{base}" for p in spec.plugins]


def save_reverted(student: torch.nn.Module, directory: Path, spec, builder) -> None:
    """A run's trained float student, reverted (its first layer folded into an embedding), saved to
    `directory` with the teacher's tokenizer and the package that provides the student."""
    with plugin_code(builder.origin(spec.student), "revert()"):
        reverted = student.revert()
    component = spec.registry.get("student", spec.student.name)
    save_student(reverted, directory, student=spec.student.resolved(), vocab_size=builder.vocab_size,
                 max_seq_len=spec.student_seq_len, plugins=plugin_refs(spec), tokenizer=builder.teacher.tokenizer(),
                 package=spec.registry.package(component))


def save_student(reverted: torch.nn.Module, directory: Path, *, student: dict, vocab_size: int,
                 max_seq_len: int, plugins: Sequence[str] = (), tokenizer=None, package: dict | None = None) -> None:
    """Write the reverted student to `directory`, replacing what was there only once it is whole.

    `student` is the spec's resolved student table (name and parameters); `plugins` the spec's
    plugin modules (`plugin_refs`), so a generic folder can be rebuilt without the spec; `package`
    the distribution that provides the student."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if hasattr(reverted, "save_pretrained"):
        _set_generation_ids(reverted, tokenizer)
        reverted.save_pretrained(tmp)
    else:
        from safetensors.torch import save_model

        save_model(reverted, str(tmp / "model.safetensors"))
        params = {k: v for k, v in student.items() if k != "name"}
        config = {GENERIC_KEY: {
            "format": GENERIC_FORMAT, "student": student["name"], "params": params, "vocab_size": vocab_size,
            "max_seq_len": max_seq_len, "plugins": list(plugins), "package": package,
            "dtype": str(next(reverted.parameters()).dtype).removeprefix("torch."),
        }}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(tmp)
    usual_permissions(tmp)  # safetensors writes 0600; a shipped folder is read by others too
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def _set_generation_ids(reverted, tokenizer) -> None:
    """The teacher's special tokens in the student's generation config, so `generate` stops and pads
    as the teacher's tokenizer expects."""
    model = getattr(reverted, "model", None)
    tok = getattr(tokenizer, "tok", None)  # a transformers tokenizer behind the teacher's
    if model is None or tok is None or getattr(model, "generation_config", None) is None:
        return
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tok, key, None)
        if key == "pad_token_id" and value is None:
            value = getattr(tok, "eos_token_id", None)
        setattr(model.generation_config, key, value)
        setattr(model.config, key, value)
    model.generation_config.do_sample = False


# --- loading --------------------------------------------------------------------------------------


def load_student(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The reverted student saved in `path` (runs/<name>/reverted), on `device`, in eval mode.

    A standard folder loads with transformers (the same call a user makes); a generic one is rebuilt
    from its student plugin, found through the registry like any component."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists() or not (path / "model.safetensors").exists():
        raise KDError(f"{path}: no saved student (needs config.json and model.safetensors); "
                      f"train it with `kd train SPEC`")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise KDError(f"{config_file}: not readable JSON ({e})") from None
    if "model_type" in config:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path)
        return CausalLMStudent(model).to(device).eval()
    if GENERIC_KEY not in config:
        raise KDError(f"{config_file}: neither a transformers config (model_type) nor a LlamaKD student ({GENERIC_KEY})")
    return _load_generic(path, config[GENERIC_KEY], device)


def recorded_package(reverted: Path, student: str) -> dict | None:
    """The package {name, version} that the generic student `student` saved in `reverted` came from,
    as its folder records it; None where there is none (no folder, a transformers folder, another
    student, or one from a spec's own module)."""
    try:
        meta = json.loads((Path(reverted) / "config.json").read_text())[GENERIC_KEY]
        return meta["package"] if meta["student"] == student else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def install_hint(package: dict) -> str:
    return f"it comes from the package '{package['name']}' {package['version']}: pip install " \
           f"'{package['name']}=={package['version']}'"


def _load_generic(path: Path, meta: dict, device) -> torch.nn.Module:
    from safetensors.torch import load_model

    if meta.get("format") != GENERIC_FORMAT:
        raise KDError(f"{path / 'config.json'}: student format {meta.get('format')}, expected {GENERIC_FORMAT}")
    registry = _registry_for(meta.get("plugins", []))
    if meta["student"] not in registry.names("student"):
        package = meta.get("package")
        install = f"; {install_hint(package)}" if package else ""
        raise KDError(f"{path}: student '{meta['student']}' is not installed here{install}")
    component = registry.get("student", meta["student"])
    params = component.params.model_validate(meta["params"])
    ctx = BuildContext(vocab_size=meta["vocab_size"], max_seq_len=meta["max_seq_len"])
    with torch.random.fork_rng(devices=[]):  # the weights are overwritten: leave the caller's RNG alone
        model = component.resolve()(params, ctx).revert()
    model = model.to(device=device, dtype=getattr(torch, meta.get("dtype", "float32")))
    load_model(model, str(path / "model.safetensors"), device=str(device))
    return model.eval()


def _registry_for(plugins: list[str]):
    """The registry with a generic folder's plugin modules (recorded by `plugin_refs`)."""
    bases = {p.partition("@")[2] for p in plugins if "@" in p}  # one spec, one folder
    base = Path(bases.pop()) if bases else None
    try:
        return load_registry([p.partition("@")[0] for p in plugins], base)
    except KDError as e:  # the spec's own modules, looked for where the spec was when the student was saved
        where = f"beside the spec in {base}" if base is not None else "at the paths it records"
        raise KDError(f"{e}; this student was saved with the plugin modules {', '.join(plugins)}, looked for "
                      f"{where}: put them back there, or on PYTHONPATH") from None
