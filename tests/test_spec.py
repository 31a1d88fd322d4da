"""Malformed specs through the real `kd validate`: exit code 1, no traceback, `file: key.path: message`.

Most cases run the CLI in this process (fast); a few run `python -m kdcore` in a subprocess, the
way a user meets it. Cases that need the teacher (vocabulary, positions) use the tiny random one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from conftest import kd_in_process as kd

import kdcore.texts
from kdcore.stages import checks
from kdcore.problems import KDError

# --- editing the tiny spec --------------------------------------------------------------------------


def _walk(spec: dict, path: str):
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    for p in parents:
        spec = spec[p]
    return spec, last


def put(path: str, value):
    """Set the key at `path` ("phases.0.lr") to `value`."""

    def edit(spec, folder):
        table, key = _walk(spec, path)
        table[key] = value

    return edit


def drop(path: str):
    def edit(spec, folder):
        table, key = _walk(spec, path)
        del table[key]

    return edit


def both(*edits):
    def edit(spec, folder):
        for e in edits:
            e(spec, folder)

    return edit


def raw(text: str | bytes):
    """Replace the whole file with this text."""
    return lambda spec, folder: text


def plugin_file(name: str, source: str):
    """Write a plugin file next to the spec and list it in `plugins`."""

    def edit(spec, folder):
        (folder / name).write_text(source)
        spec["plugins"] = [name]

    return edit


def with_file(name: str, content: bytes, *edits):
    """Write a file next to the spec, then apply `edits` (which may name it)."""

    def edit(spec, folder):
        (folder / name).write_bytes(content)
        for e in edits:
            e(spec, folder)

    return edit


def under_tmp(key: str, relative: str):
    """Set a folder key (store_dir, runs_dir) to a path inside the test's folder."""

    def edit(spec, folder):
        spec[key] = str(folder / relative)

    return edit


def sampler_plugin(name: str, body: str):
    """A plugin file registering the sampler `probe` (class Probe, params ProbeParams) from `body`."""
    head = ("from pydantic import BaseModel, ConfigDict, Field, model_validator\n"
            "from kdcore.api import Inputs, ParamError, Params\n"
            "from kdcore.plugin.hookspecs import hookimpl\n\n")
    tail = "\n\n@hookimpl\ndef kd_register_samplers(register):\n    register('probe', Probe, ProbeParams)\n"
    return plugin_file(name, head + body + tail)


def use_probe(**params):
    return put(UNIFORM_IN_LENGTH_MIX, {"name": "probe", **params})


PROBE_CLASS = "class Probe:\n    produces = 'ids'\n    deterministic = 'pure'\n\n    def __init__(self, params, ctx):\n        pass\n"

TOML_HEAD = 'name = "broken"\n[teacher]\nname = "tiny-llama"\nvocab_size = 64\n'
UNIFORM_IN_LENGTH_MIX = "datasets.noise.sampler.sampler"
U = UNIFORM_IN_LENGTH_MIX
INF, NAN = float("inf"), float("nan")
TOPK = both(put("datasets.noise.logits", "topk"), put("datasets.noise.topk", 8))
FINITE = "Input should be a finite number"

def with_folder(name: str, files: dict[str, bytes], *edits):
    """Make a folder next to the spec holding `files`, then apply `edits` (which may name it)."""

    def edit(spec, folder):
        (folder / name).mkdir()
        for file, content in files.items():
            (folder / name / file).write_bytes(content)
        for e in edits:
            e(spec, folder)

    return edit


# (id, edit, the key path the error names (None: the file as a whole), fragments the output must contain)
CASES = [
    # sizes this machine cannot hold, or that would run for days: refused before anything is built
    ("teacher-hidden-2**31", put("teacher.hidden_size", 2**31), "teacher", ["parameters need", "more than this machine's"]),
    ("student-layers-1e6", put("student.layers", 10**6), "student.layers", ["needs about", "to train"]),
    ("teacher-generated-group-2**40", put(U, {"name": "teacher-generated", "group": 2**40}), f"{U}.group",
     ["samples decoded together keep", "use a smaller group"]),
    ("samples-1e15", put("datasets.noise.samples", 10**15), "datasets.noise.samples",
     ["teacher positions, more than 10,000,000,000"]),
    ("blocks-past-a-million", both(put("datasets.noise.samples", 10**9), put("datasets.noise.inputs", "dense")),
     "datasets.noise.block_size", ["125,000,000 blocks", "raise block_size"]),
    ("max-new-tokens-1e9", put("eval.max_new_tokens", 10**9), "eval.max_new_tokens", ["past the teacher's 256 positions"]),
    ("training-batch-past-memory", both(put("datasets.noise.samples", 10**7), put("datasets.noise.block_size", 10**4),
                                        put("phases.0.batch_size", 10**7)),
     "phases[0].batch_size", ["of inputs and targets, more than half this machine's"]),
    ("teacher-batch-past-memory", both(put("datasets.noise.samples", 10**8), put("datasets.noise.block_size", 10**8),
                                       put("datasets.noise.batch_size", 10**8)),
     "datasets.noise.batch_size", ["of rows and logits, more than half this machine's"]),
    # teacher files that cannot be read: named, with the key, before any weights are read
    ("teacher-an-empty-folder", with_folder("empty", {}, put("teacher", {"name": "hf-causal-lm", "path": "empty"})),
     "teacher.path", ["has no config.json: not a Hugging Face model folder"]),
    ("teacher-garbage-gguf", with_file("model.gguf", b"\x00garbage" * 64, put("teacher", {"name": "hf-causal-lm", "path": "model.gguf"})),
     "teacher.path", ["is not a GGUF file"]),
    ("teacher-garbage-config", with_folder("hf", {"config.json": b"{garbage"}, put("teacher", {"name": "hf-causal-lm", "path": "hf"})),
     "teacher.path", ["config.json: not a config transformers can read"]),
    ("teacher-config-without-model-type", with_folder("hf", {"config.json": b"{}"}, put("teacher", {"name": "hf-causal-lm", "path": "hf"})),
     "teacher.path", ["config.json: not a config transformers can read"]),
    ("teacher-garbage-params-json", with_folder("meta", {"params.json": b"{garbage", "tokenizer.model": b"x"},
                                                put("teacher", {"name": "meta-llama", "path": "meta"})),
     "teacher.path", ["params.json: not a Meta-format params.json"]),
    # evaluation that could only fail after generation and training
    ("eval-text-empty", with_file("empty.txt", b"", put("eval.text", "empty.txt")), "eval.text",
     ["empty.txt has 0 tokens", "fewer than eval.windows = 8"]),
    ("eval-text-too-short-for-the-windows", with_file("short.txt", b"twelve bytes", put("eval.text", "short.txt")),
     "eval.text", ["short.txt has 12 tokens: 6 windows of 6 tokens", "fewer than eval.windows = 8"]),
    ("extra-eval-text-too-short", with_file("short.txt", b"abc", put("eval.extra_texts", ["short.txt"])),
     "eval.extra_texts[0]", ["short.txt has 3 tokens"]),
    ("eval-positions-all-of-a-last-student", both(put("eval.positions", "all"), put("student", {"name": "crossbaby"})),
     "eval.positions", ["'all', but student 'crossbaby' predicts only last"]),
    # folders that are files (store_dir and runs_dir are relative to the working directory: given whole here)
    ("runs-dir-a-file", with_file("afile", b"x", under_tmp("runs_dir", "afile")), "runs_dir", ["afile is a file, not a folder"]),
    ("store-dir-a-file", with_file("afile", b"x", under_tmp("store_dir", "afile")), "store_dir", ["afile is a file, not a folder"]),
    ("runs-dir-under-a-file", with_file("afile", b"x", under_tmp("runs_dir", "afile/runs")), "runs_dir",
     ["afile is a file, not a folder"]),
    # unknown keys, with "did you mean"
    ("unknown-top-level-key", put("nmae", "x"), "nmae", ["unknown key — did you mean 'name'?"]),
    ("unknown-dataset-key", put("datasets.noise.sampels", 3), "datasets.noise.sampels",
     ["unknown key — did you mean 'samples'?"]),
    ("unknown-phase-key", put("phases.0.lrr", 0.1), "phases[0].lrr", ["unknown key — did you mean 'lr'?"]),
    ("unknown-eval-key", put("eval.windowz", 3), "eval.windowz", ["unknown key — did you mean 'windows'?"]),
    ("unknown-sampler-param", put(f"{U}.hgih", 1.0), f"{U}.hgih", ["unknown key — did you mean 'high'?"]),
    ("sampler-param-typo", put(U, {"name": "soft-ids", "scael": 3}), f"{U}.scael",
     ["unknown key — did you mean 'scale'?"]),
    ("unknown-student-param", put("student.hiden_size", 8), "student.hiden_size",
     ["unknown key — did you mean 'hidden_size'?"]),
    ("unknown-teacher-param", put("teacher.layer", 2), "teacher.layer", ["unknown key — did you mean 'layers'?"]),
    ("unknown-loss-param", put("phases.0.losses.0.temprature", 2.0), "phases[0].losses[0].temprature",
     ["unknown key — did you mean 'temperature'?"]),
    ("params-of-another-student", put("student.name", "crossbaby"), "student.hidden_size",
     ["unknown key; available: vocab_size, word_embed"]),
    # wrong types: TOML values are typed, nothing is converted
    ("samples-not-int", put("datasets.noise.samples", "ten"), "datasets.noise.samples",
     ["Input should be a valid integer", "(got 'ten')"]),
    ("samples-a-float", put("datasets.noise.samples", 1e19), "datasets.noise.samples",
     ["Input should be a valid integer (got 1e+19)"]),
    ("batch-size-a-float", put("phases.0.batch_size", 8.5), "phases[0].batch_size",
     ["Input should be a valid integer (got 8.5)"]),
    ("teacher-vocab-a-string", put("teacher.vocab_size", "64"), "teacher.vocab_size",
     ["Input should be a valid integer (got '64')"]),
    ("student-vocab-a-string", put("student.vocab_size", "64"), "student.vocab_size",
     ["Input should be a valid integer (got '64')"]),
    ("student-width-a-float", put("student.hidden_size", 16.0), "student.hidden_size",
     ["Input should be a valid integer (got 16.0)"]),
    ("epochs-a-bool", put("phases.0.epochs", True), "phases[0].epochs", ["Input should be a valid integer (got True)"]),
    ("lr-a-bool", put("phases.0.lr", True), "phases[0].lr", ["Input should be a valid number (got True)"]),
    ("chat-template-an-int", put("eval.chat_template", 1), "eval.chat_template",
     ["Input should be a valid boolean (got 1)"]),
    ("eval-windows-a-string", put("eval.windows", "8"), "eval.windows", ["Input should be a valid integer (got '8')"]),
    ("full-fraction-a-string", put("datasets.noise.sampler.full_fraction", "0.5"), "datasets.noise.sampler.full_fraction",
     ["Input should be a valid number (got '0.5')"]),
    ("lr-not-number", put("phases.0.lr", "fast"), "phases[0].lr", ["Input should be a valid number", "(got 'fast')"]),
    ("description-not-string", put("description", 3), "description", ["Input should be a valid string (got 3)"]),
    ("store-dir-not-string", put("store_dir", 3), "store_dir", ["Input should be a valid string (got 3)"]),
    ("eval-text-not-string", put("eval.text", 3), "eval.text", ["Input should be a valid string (got 3)"]),
    ("phases-not-list", put("phases", {"dataset": "noise"}), "phases", ["Input should be a valid list"]),
    ("component-not-table", put("student", "llama"), "student", ["Input should be a valid dictionary", "(got 'llama')"]),
    ("plugins-not-list", put("plugins", "my_sampler"), "plugins", ["Input should be a valid list"]),
    ("plugins-item-not-string", put("plugins", [1]), "plugins[0]", ["Input should be a valid string (got 1)"]),
    ("spec-name-pattern", put("name", "my run"), "name", ["String should match pattern", "(got 'my run')"]),
    ("dataset-name-unsafe", lambda spec, folder: spec["datasets"].update({"no way": spec["datasets"]["noise"]}),
     "datasets.no way", ["dataset names use letters, digits, '_', '.', '-'"]),
    # missing tables and keys
    ("no-teacher", drop("teacher"), "teacher", ["required key is missing"]),
    ("no-datasets", drop("datasets"), "datasets", ["required key is missing"]),
    ("no-phases", drop("phases"), "phases", ["required key is missing"]),
    ("phase-without-losses", drop("phases.0.losses"), "phases[0].losses", ["required key is missing"]),
    ("phase-with-empty-losses", put("phases.0.losses", []), "phases[0].losses", ["List should have at least 1 item"]),
    ("dataset-without-sampler", drop("datasets.noise.sampler"), "datasets.noise.sampler", ["required key is missing"]),
    ("component-without-name", drop("student.name"), "student.name", ["required key is missing"]),
    ("nested-sampler-without-name", drop(f"{U}.name"), f"{U}.name", ["required key is missing"]),
    ("empty-file", raw(""), "name", ["required key is missing", "teacher: required key is missing",
                                     "phases: required key is missing"]),
    # bad ranges
    ("samples-zero", put("datasets.noise.samples", 0), "datasets.noise.samples", ["Input should be greater than 0"]),
    ("samples-past-64-bits", put("datasets.noise.samples", 10**19), "datasets.noise.samples",
     ["10000000000000000000 does not fit in a 64-bit integer"]),
    ("max-seq-len-zero", put("datasets.noise.max_seq_len", 0), "datasets.noise.max_seq_len",
     ["Input should be greater than 0"]),
    ("block-size-zero", put("datasets.noise.block_size", 0), "datasets.noise.block_size",
     ["Input should be greater than 0"]),
    ("dataset-seed-negative", put("datasets.noise.seed", -1), "datasets.noise.seed",
     ["Input should be greater than or equal to 0 (got -1)"]),
    ("dataset-seed-past-63-bits", put("datasets.noise.seed", 2**70), "datasets.noise.seed",
     ["Input should be less than 9223372036854775808"]),
    ("phase-seed-negative", put("phases.0.seed", -1), "phases[0].seed",
     ["Input should be greater than or equal to 0 (got -1)"]),
    ("phase-seed-2-to-the-63", put("phases.0.seed", 2**63), "phases[0].seed",
     ["Input should be less than 9223372036854775808"]),
    ("teacher-seed-negative", put("teacher.seed", -1), "teacher.seed", ["Input should be greater than or equal to 0"]),
    ("lr-negative", put("phases.0.lr", -1e-3), "phases[0].lr", ["Input should be greater than 0 (got -0.001)"]),
    ("lr-inf", put("phases.0.lr", INF), "phases[0].lr", [FINITE, "(got inf)"]),
    ("lr-nan", put("phases.0.lr", NAN), "phases[0].lr", [FINITE, "(got nan)"]),
    ("gamma-nan", put("phases.0.scheduler", {"name": "step", "gamma": NAN}), "phases[0].scheduler.gamma", [FINITE]),
    ("momentum-inf", put("phases.0.optimizer", {"name": "sgd", "momentum": INF}), "phases[0].optimizer.momentum", [FINITE]),
    ("clip-inf", put("phases.0.clip", INF), "phases[0].clip", [FINITE]),
    ("clip-zero", put("phases.0.clip", 0), "phases[0].clip", ["Input should be greater than 0"]),
    ("max-steps-zero", put("phases.0.max_steps", 0), "phases[0].max_steps", ["Input should be greater than 0"]),
    ("workers-negative", put("phases.0.workers", -1), "phases[0].workers", ["Input should be greater than or equal to 0"]),
    ("uniform-low-not-below-high", both(put(f"{U}.low", 10.0), put(f"{U}.high", -10.0)), f"{U}.low",
     ["must be < high (got 10 >= -10)"]),
    ("uniform-high-inf", put(f"{U}.high", INF), f"{U}.high", [FINITE, "(got inf)"]),
    ("gaussian-mean-nan", put(U, {"name": "gaussian", "mean": NAN}), f"{U}.mean", [FINITE, "(got nan)"]),
    ("gaussian-std-zero", put(U, {"name": "gaussian", "std": 0}), f"{U}.std", ["Input should be greater than 0"]),
    ("full-fraction-above-one", put("datasets.noise.sampler.full_fraction", 1.5), "datasets.noise.sampler.full_fraction",
     ["Input should be less than or equal to 1 (got 1.5)"]),
    ("kl-temperature-zero", put("phases.0.losses.0.temperature", 0), "phases[0].losses[0].temperature",
     ["Input should be greater than 0"]),
    ("kl-temperature-inf", put("phases.0.losses.0.temperature", INF), "phases[0].losses[0].temperature", [FINITE]),
    ("skew-kl-alpha-one", put("phases.0.losses", [{"name": "kl"}, {"name": "skew-kl", "alpha": 1.0}]),
     "phases[0].losses[1].alpha", ["Input should be less than 1"]),
    ("loss-weight-negative", put("phases.0.losses.0.weight", -1), "phases[0].losses[0].weight",
     ["Input should be greater than or equal to 0"]),
    ("loss-weight-nan", put("phases.0.losses.0.weight", NAN), "phases[0].losses[0].weight", [FINITE]),
    ("student-rope-theta-inf", put("student.rope_theta", INF), "student.rope_theta", [FINITE]),
    ("eval-max-new-tokens-negative", put("eval.max_new_tokens", -1), "eval.max_new_tokens",
     ["Input should be greater than or equal to 0"]),
    ("eval-empty-prompt", put("eval.prompts", ["The cat", "  "]), "eval.prompts[1]",
     ["an empty prompt gives the models nothing to continue"]),
    # unknown plugin names
    ("sampler-misspelled", put(f"{U}.name", "unifrom"), f"{U}.name",
     ["unknown sampler 'unifrom' — did you mean 'uniform'? available:", "gaussian"]),
    ("student-misspelled", put("student.name", "lama"), "student.name",
     ["unknown student 'lama' — did you mean 'llama'? available:"]),
    ("loss-misspelled", put("phases.0.losses.0.name", "kll"), "phases[0].losses[0].name",
     ["unknown loss 'kll' — did you mean 'kl'? available:"]),
    ("teacher-misspelled", put("teacher.name", "tiny-lama"), "teacher.name",
     ["unknown teacher 'tiny-lama' — did you mean 'tiny-llama'? available:"]),
    # TOML itself: no key, the file
    ("toml-syntax-error", raw(TOML_HEAD.replace("[teacher]", "[teacher")), None, ["TOML syntax error", "line 2"]),
    ("duplicate-dataset-names", raw(TOML_HEAD + "[datasets.noise]\nsamples = 1\n[datasets.noise]\nsamples = 2\n"),
     None, ["TOML syntax error", "('datasets', 'noise')", "twice"]),
    ("duplicate-key", raw(TOML_HEAD + "vocab_size = 32\n"), None, ["TOML syntax error", "line 5"]),
    ("not-utf8", raw(b'name = "\xff\xfe"\n'), None, ["not UTF-8 text"]),
    # across tables
    ("phase-names-undefined-dataset", put("phases.0.dataset", "nosie"), "phases[0].dataset",
     ["no dataset 'nosie' — did you mean 'noise'?"]),
    ("kaiming-on-a-later-phase", lambda spec, folder: spec["phases"].append(dict(spec["phases"][0], init="kaiming")),
     "phases[1].init", ["re-initialising would discard what earlier phases learned"]),
    ("store-inside-the-run", under_tmp("store_dir", "runs/tiny"), "store_dir",
     ["the store of dataset 'noise'", "and the run folder", "overlap"]),
    ("run-inside-the-store", under_tmp("runs_dir", "store/noise"), "store_dir",
     ["the store of dataset 'noise'", "overlap: regenerating the dataset would delete the trained student"]),
    # enums
    ("positions-invalid", put("datasets.noise.positions", "first"), "datasets.noise.positions",
     ["Input should be 'last' or 'all' (got 'first')"]),
    ("logits-invalid", put("datasets.noise.logits", "sparse"), "datasets.noise.logits",
     ["Input should be 'dense' or 'topk' (got 'sparse')"]),
    ("optimizer-invalid", put("phases.0.optimizer", "adam"), "phases[0].optimizer.name",
     ["unknown optimizer 'adam' — did you mean 'adamw'?"]),
    ("scheduler-invalid", put("phases.0.scheduler", {"name": "cosine", "gamma": 0.5}), "phases[0].scheduler.gamma",
     ["unknown key"]),
    ("eval-positions-invalid", put("eval.positions", "first"), "eval.positions", ["Input should be 'last' or 'all'"]),
    ("kl-direction-invalid", put("phases.0.losses.0.direction", "sideways"), "phases[0].losses[0].direction",
     ["Input should be 'forward' or 'reverse'"]),
    ("teacher-dtype-invalid", put("teacher.dtype", "float64"), "teacher.dtype", ["Input should be 'float32'"]),
    # nested samplers
    ("length-mix-inner-unknown", put(f"{U}.name", "gausian"), f"{U}.name",
     ["unknown sampler 'gausian' — did you mean 'gaussian'?"]),
    ("length-mix-inner-bad-param", put(f"{U}.low", "x"), f"{U}.low", ["Input should be a valid number", "(got 'x')"]),
    ("mix-weights-length",
     put("datasets.noise.sampler", {"name": "mix", "samplers": [{"name": "uniform"}, {"name": "gaussian"}],
                                    "weights": [1.0]}),
     "datasets.noise.sampler.weights", ["1 given for 2 samplers"]),
    ("mix-weights-negative",
     put("datasets.noise.sampler", {"name": "mix", "samplers": [{"name": "uniform"}], "weights": [-1.0]}),
     "datasets.noise.sampler.weights", ["must be >= 0 with a positive sum"]),
    ("mix-weight-inf",
     put("datasets.noise.sampler", {"name": "mix", "samplers": [{"name": "uniform"}, {"name": "gaussian"}],
                                    "weights": [1.0, INF]}),
     "datasets.noise.sampler.weights[1]", [FINITE]),
    ("mix-inner-unknown",
     put("datasets.noise.sampler", {"name": "mix", "samplers": [{"name": "uniform"}, {"name": "gausian"}]}),
     "datasets.noise.sampler.samplers[1].name", ["unknown sampler 'gausian' — did you mean 'gaussian'?"]),
    ("mix-inner-nan",
     put("datasets.noise.sampler", {"name": "mix", "samplers": [{"name": "uniform"}, {"name": "gaussian", "std": NAN}]}),
     "datasets.noise.sampler.samplers[1].std", [FINITE]),
    # the evaluation text, checked with the spec
    ("eval-text-missing", put("eval.text", "no-such.txt"), "eval.text", ["no-such.txt: no such text file"]),
    ("eval-text-a-folder", put("eval.text", "."), "eval.text", [". is not a text file"]),
    ("eval-text-builtin-without-name", put("eval.text", "builtin:"), "eval.text",
     ["no shipped text 'builtin:'; available: builtin:corpus_excerpt.txt, builtin:eval.txt"]),
    ("eval-text-builtin-unknown", put("eval.text", "builtin:evals.txt"), "eval.text",
     ["no shipped text 'builtin:evals.txt'; available:"]),
    ("eval-text-builtin-not-a-text", put("eval.text", "builtin:__init__.py"), "eval.text",
     ["no shipped text 'builtin:__init__.py'"]),
    ("eval-text-builtin-outside", put("eval.text", "builtin:../texts/eval.txt"), "eval.text",
     ["no shipped text 'builtin:../texts/eval.txt'"]),
    ("eval-text-not-utf8", with_file("latin1.txt", "café au lait".encode("latin-1"), put("eval.text", "latin1.txt")),
     "eval.text", ["latin1.txt is not UTF-8 text (invalid continuation byte at byte 3)"]),
    # plugin modules
    ("plugin-module-missing", put("plugins", ["no_such_kd_plugin"]), "plugins",
     ["cannot import plugin module 'no_such_kd_plugin'"]),
    ("plugin-file-missing", put("plugins", ["missing_plugin.py"]), "plugins",
     ["plugin file not found", "missing_plugin.py"]),
    ("plugin-file-raises-on-import", plugin_file("raising_plugin.py", "x = 1\nundefined_name + 1\n"), "plugins",
     ["cannot import plugin file", "NameError: name 'undefined_name' is not defined (", "raising_plugin.py:2)"]),
    ("plugin-file-syntax-error", plugin_file("broken_plugin.py", "def f(:\n"), "plugins",
     ["cannot import plugin file", "invalid syntax (", "broken_plugin.py:1)"]),
    ("plugin-misspelled-hook", plugin_file("typo_plugin.py", "from kdcore.plugin.hookspecs import hookimpl\n\n@hookimpl\n"
                                                              "def kd_register_sampler(register):\n    pass\n"),
     "plugins", ["plugin 'typo_plugin.py': unknown hook 'kd_register_sampler' — did you mean 'kd_register_samplers'?"]),
    # the parameter contract, enforced when a plugin registers
    ("plugin-params-allow-unknown-keys",
     sampler_plugin("loose_plugin.py", "class ProbeParams(BaseModel):\n    scale: float = 1.0\n\n\n" + PROBE_CLASS),
     "plugins", ["loose_plugin.py: sampler 'probe': ProbeParams lets unknown keys through (extra='ignore')",
                 "subclass kdcore.api.Params"]),
    ("plugin-params-allow-inf",
     sampler_plugin("inf_plugin.py", "class ProbeParams(BaseModel):\n    model_config = ConfigDict(extra='forbid')\n"
                                     "    scale: float = 1.0\n\n\n" + PROBE_CLASS),
     "plugins", ["inf_plugin.py: sampler 'probe': ProbeParams accepts inf and nan as floats"]),
    ("plugin-nested-params-allow-unknown-keys",
     sampler_plugin("nested_plugin.py", "class Inner(BaseModel):\n    width: int = 1\n\n\n"
                                        "class ProbeParams(Params):\n    inner: Inner = Inner()\n\n\n" + PROBE_CLASS),
     "plugins", ["nested_plugin.py: sampler 'probe': Inner lets unknown keys through"]),
    ("plugin-params-not-a-model",
     sampler_plugin("dict_plugin.py", "ProbeParams = dict\n\n\n" + PROBE_CLASS),
     "plugins", ["dict_plugin.py: sampler 'probe': params must be a pydantic model class"]),
    ("plugin-target-not-callable",
     sampler_plugin("target_plugin.py", "class ProbeParams(Params):\n    pass\n\n\nProbe = 'no_colon'\n"),
     "plugins", ["target_plugin.py: sampler 'probe': the target must be a class, a factory", "got 'no_colon'"]),
    # a component's own checks, anchored where it sits
    ("plugin-component-refuses-a-key",
     both(sampler_plugin("picky_plugin.py", "class ProbeParams(Params):\n    token: int = 0\n\n\n"
                         "class Probe:\n    def __init__(self, params, ctx):\n        raise ParamError("
                         "'token', f'{params.token} is past the vocabulary ({ctx.vocab_size})')\n"),
          use_probe(token=99)),
     f"{U}.token", ["99 is past the vocabulary (64)"]),
    ("plugin-validator-refuses-a-key",
     both(sampler_plugin("checked_plugin.py", "class ProbeParams(Params):\n    low: int = 0\n    high: int = 1\n\n"
                         "    @model_validator(mode='after')\n    def _order(self):\n"
                         "        if self.high <= self.low:\n            raise ParamError('high', 'must be > low')\n"
                         "        return self\n\n\n" + PROBE_CLASS),
          use_probe(low=3, high=2)),
     f"{U}.high", ["must be > low"]),
    # checks that need the teacher (tiny-llama: vocab 64, 256 positions)
    ("student-vocab-mismatch", put("student.vocab_size", 100), "student.vocab_size",
     ["100 does not match the teacher's vocabulary (64)"]),
    ("random-ids-past-vocab", put("datasets.noise.sampler", {"name": "random-ids", "high": 100}),
     "datasets.noise.sampler.high", ["100 is past the teacher's vocabulary (64)"]),
    ("nested-random-ids-past-vocab", put(U, {"name": "random-ids", "high": 65}), f"{U}.high",
     ["65 is past the teacher's vocabulary (64)"]),
    ("random-ids-low-not-below-high", put("datasets.noise.sampler", {"name": "random-ids", "low": 10, "high": 5}),
     "datasets.noise.sampler.low", ["must be < high (got 10 >= 5)"]),
    ("k-hot-past-vocab", put(U, {"name": "k-hot", "k": 100}), f"{U}.k", ["100 tokens per position, past the teacher's vocabulary (64)"]),
    ("teacher-generated-prefix-past-max-seq-len", put(U, {"name": "teacher-generated", "prefix": 7}), f"{U}.prefix",
     ["7 is longer than max_seq_len 6"]),
    ("max-seq-len-past-positions", put("datasets.noise.max_seq_len", 300), "datasets.noise.max_seq_len",
     ["300 is longer than the teacher's 256 positions"]),
    ("topk-past-vocab", both(put("datasets.noise.logits", "topk"), put("datasets.noise.topk", 100)),
     "datasets.noise.topk", ["100 is larger than the vocabulary (64)"]),
    ("samples-past-a-64-bit-store", put("datasets.noise.samples", 2**62), "datasets.noise.samples",
     ["4,611,686,018,427,387,904 samples x 6 positions is", "teacher positions, more than 10,000,000,000"]),
    ("length-mix-min-len-past-max-seq-len", put("datasets.noise.sampler.min_len", 7), "datasets.noise.sampler.min_len",
     ["7 is longer than max_seq_len 6"]),
    ("student-heads", put("student.hidden_size", 17), "student.heads", ["hidden_size (17) must be divisible by heads (2)"]),
    ("student-kv-heads", put("student.kv_heads", 3), "student.kv_heads", ["heads (2) must be divisible by kv_heads (3)"]),
    ("transformer-heads", put("student", {"name": "transformer-baby", "d_model": 64, "nhead": 3}), "student.nhead",
     ["d_model (64) must be divisible by nhead (3)"]),
    ("student-past-memory", put("student.hidden_size", 2**40), "student.hidden_size",
     ["needs about", "to train (weights, gradients, optimizer state), more than this machine's"]),
    ("tiny-teacher-heads", put("teacher.heads", 3), "teacher.heads", ["hidden_size must divide by heads"]),
    ("hf-teacher-path-missing", put("teacher", {"name": "hf-causal-lm", "path": "nowhere"}), "teacher.path",
     ["nowhere does not exist"]),
    ("meta-teacher-not-a-checkpoint", put("teacher", {"name": "meta-llama", "path": "."}), "teacher.path",
     ["has no params.json (Meta-format Llama checkpoint expected)"]),
    ("all-positions-fixed-length-student",
     both(put("student", {"name": "crossbaby", "word_embed": 4}), put("datasets.noise.positions", "all")),
     "datasets.noise.positions", ["'all' targets, but student 'crossbaby' predicts only last"]),
    ("tempered-kl-on-topk-targets", both(TOPK, put("phases.0.losses.0.temperature", 2.0)),
     "phases[0].losses[0].temperature", ["must be 1 with top-k targets"]),
    ("seed-inputs-rerun-the-teacher",
     put("datasets.noise.sampler", {"name": "mix", "samplers": [{"name": "teacher-generated"}, {"name": "uniform"}]}),
     "datasets.noise.inputs", ["'seed' would re-run the teacher's generation"]),
    ("text-windows-on-the-eval-text", put("datasets.noise.sampler", {"name": "text-windows", "text": "builtin:eval.txt"}),
     "datasets.noise.sampler.text", ["builtin:eval.txt holds the same text as eval.text (builtin:eval.txt)"]),
    ("text-windows-on-a-copy-of-the-eval-text",
     with_file("copy.txt", (Path(kdcore.texts.__file__).parent / "eval.txt").read_bytes(),
               put("datasets.noise.sampler", {"name": "text-windows", "text": "copy.txt"})),
     "datasets.noise.sampler.text", ["copy.txt holds the same text as eval.text (builtin:eval.txt)"]),
    ("text-windows-text-missing", put("datasets.noise.sampler", {"name": "text-windows", "text": "nowhere.txt"}),
     "datasets.noise.sampler.text", ["nowhere.txt: no such text file"]),
    ("text-windows-text-a-folder", put("datasets.noise.sampler", {"name": "text-windows", "text": "builtin:."}),
     "datasets.noise.sampler.text", ["no shipped text 'builtin:.'"]),
    ("text-windows-text-not-utf8",
     with_file("latin1.txt", "déjà vu".encode("latin-1"),
               put("datasets.noise.sampler", {"name": "text-windows", "text": "latin1.txt"})),
     "datasets.noise.sampler.text", ["latin1.txt is not UTF-8 text"]),
    ("text-windows-text-too-short",
     with_file("short.txt", b"abc", put("datasets.noise.sampler", {"name": "text-windows", "text": "short.txt"})),
     "datasets.noise.sampler.text", ["short.txt has 3 tokens, fewer than max_seq_len"]),
]


@pytest.fixture
def bad_spec(tmp_path, tiny_spec):
    """bad_spec(edit) -> path of the tiny spec after `edit`, as a user would write it."""

    def make(edit) -> Path:
        spec = {**tiny_spec, "store_dir": str(tmp_path / "store"), "runs_dir": str(tmp_path / "runs")}
        text = edit(spec, tmp_path)
        if text is None:
            text = tomli_w.dumps(spec)
        path = tmp_path / "bad-spec.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    return make


def assert_user_error(code: int, output: str, path: Path, fragments: list[str], key: str | None = None) -> None:
    """Exit 1, no traceback, every line names the file, a line `file: key: ...` holds the first
    fragment (`key` None: an error about the file as a whole), every fragment is in the output."""
    assert code == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), output
    for line in lines:
        assert str(path) in line, f"an error line does not name the file:\n{output}"
    if key is not None:
        keyed = [line for line in lines if f"{path}: {key}: " in line]
        assert any(fragments[0] in line for line in keyed), f"no line '{key}: ...{fragments[0]}' in:\n{output}"
    for fragment in fragments:
        assert f"{path}: " in output and fragment in output, f"missing {fragment!r} in:\n{output}"


def test_cases_are_enough_and_distinct():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids)) >= 150
    # every case names its key, but those about the file as a whole
    assert all(key or frags[0].startswith(("TOML syntax error", "not UTF-8")) for _, _, key, frags in CASES)


def test_tiny_spec_is_valid(bad_spec):
    path = bad_spec(lambda spec, folder: None)
    code, output = kd("validate", path)
    assert code == 0, output
    assert "valid" in output and "teacher vocab 64" in output


@pytest.mark.parametrize("edit, key, fragments", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_malformed_spec(bad_spec, edit, key, fragments, tmp_path):
    """`kd validate` and `kd run` both refuse it: exit 1, file and key, no traceback; and nothing is
    created or deleted beside the spec (no store, no run folder, no empty folders)."""
    path = bad_spec(edit)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert_user_error(*kd("validate", path), path, fragments, key)
    code, output = kd("run", path)
    assert code == 1 and "Traceback" not in output and f"{path}: " in output, output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("case", ["toml-syntax-error", "sampler-misspelled", "plugin-module-missing"])
def test_malformed_spec_in_a_subprocess(bad_spec, case):
    """`python -m kdcore` is the console script's `main()`: the same message, exit code 1, no traceback."""
    _, edit, key, fragments = next(c for c in CASES if c[0] == case)
    path = bad_spec(edit)
    proc = subprocess.run([sys.executable, "-m", "kdcore", "validate", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout == ""
    assert_user_error(proc.returncode, proc.stderr, path, fragments, key)


def test_every_problem_is_reported_at_once(bad_spec):
    edit = both(
        put("nmae", "x"),
        put("datasets.noise.samples", 0),
        put(f"{UNIFORM_IN_LENGTH_MIX}.low", 20.0),
        put("phases.0.lr", "fast"),
        put("phases.0.dataset", "nosie"),
        put("student.name", "lama"),
        put("phases.0.losses.0.temperature", -1.0),
    )
    path = bad_spec(edit)
    code, output = kd("validate", path)
    assert_user_error(code, output, path, [
        "nmae: unknown key",
        "datasets.noise.samples: Input should be greater than 0",
        f"{UNIFORM_IN_LENGTH_MIX}.low: must be < high (got 20 >= 10)",
        "phases[0].lr: Input should be a valid number",
        "phases[0].dataset: no dataset 'nosie'",
        "student.name: unknown student 'lama'",
        "phases[0].losses[0].temperature: Input should be greater than 0",
    ])
    assert len(output.strip().splitlines()) == 7, output


def test_every_problem_found_with_the_teacher_is_reported_at_once(bad_spec, tiny_spec):
    second = {**tiny_spec["datasets"]["noise"], "max_seq_len": 300,
              "sampler": {"name": "random-ids", "high": 100}}
    edit = both(
        put("student.vocab_size", 100),
        put("datasets.noise.logits", "topk"),
        put("datasets.noise.topk", 65),
        put("datasets.long", second),
    )
    path = bad_spec(edit)
    code, output = kd("validate", path)
    assert_user_error(code, output, path, [
        "100 does not match the teacher's vocabulary (64)",
        "datasets.noise.topk: 65 is larger than the vocabulary (64)",
        "datasets.long.max_seq_len: 300 is longer than the teacher's 256 positions",
        "datasets.long.sampler.high: 100 is past the teacher's vocabulary (64)",  # the sampler is built all the same
    ])
    assert len(output.strip().splitlines()) == 4, output


def test_missing_and_unreadable_spec_files(tmp_path):
    code, output = kd("validate", tmp_path / "nope.toml")
    assert code == 1 and "nope.toml: no such spec file" in output and "Traceback" not in output
    code, output = kd("validate", tmp_path)
    assert code == 1 and f"{tmp_path}: not a regular file" in output and "Traceback" not in output


def test_valid_spec_resolves_defaults_and_counts_parameters(bad_spec):
    import json

    path = bad_spec(lambda spec, folder: None)
    code, output = kd("validate", path, "--json")
    assert code == 0, output
    info = json.loads(output)
    assert info["teacher_vocab"] == 64
    assert info["student_parameters"] > 0
    noise = info["spec"]["datasets"]["noise"]
    assert noise["positions"] == "last" and noise["logits"] == "dense"  # defaults filled in
    assert noise["sampler"]["sampler"] == {"name": "uniform", "low": -10.0, "high": 10.0}
    kl = {"name": "kl", "temperature": 1.0, "direction": "forward", "weight": 1.0}
    assert info["spec"]["phases"][0]["losses"] == [kl]


def _validate(write_spec, data):
    code, output = kd("validate", write_spec(data))
    return code, " ".join(output.split())


def test_seed_inputs_that_would_rerun_the_teacher_are_refused(tiny_spec, write_spec):
    tiny_spec["datasets"]["noise"]["sampler"] = {
        "name": "mix", "samplers": [{"name": "teacher-generated"}, {"name": "uniform"}]}
    code, output = _validate(write_spec, tiny_spec)
    assert code == 1
    assert "datasets.noise.inputs: 'seed' would re-run the teacher's generation" in output
    tiny_spec["datasets"]["noise"]["inputs"] = "dense"
    code, output = _validate(write_spec, tiny_spec)
    assert code == 0, output


# --- the evaluation text is part of the spec: checked before any stage ----------------------------


@pytest.mark.parametrize("command", [["validate"], ["run"], ["run", "--dry-run"], ["eval"], ["generate"], ["train"]])
@pytest.mark.parametrize("text, fragment", [("gone.txt", "gone.txt: no such text file"),
                                            ("builtin:", "no shipped text 'builtin:'"),
                                            ("latin1.txt", "latin1.txt is not UTF-8 text")])
def test_eval_text_is_checked_before_any_stage(bad_spec, tmp_path, command, text, fragment):
    path = bad_spec(with_file("latin1.txt", "déjà vu".encode("latin-1"), put("eval.text", text)))
    code, output = kd(*command, path)
    assert_user_error(code, output, path, [fragment], "eval.text")
    assert not (tmp_path / "store").exists() and not (tmp_path / "runs").exists()  # nothing generated or trained


def test_eval_text_relative_to_the_spec_folder(bad_spec, tmp_path, monkeypatch):
    path = bad_spec(with_file("mine.txt", b"A text of my own.\n" * 20, put("eval.text", "mine.txt")))
    monkeypatch.chdir(tmp_path.parent)  # the spec's folder, not the working directory, holds it
    code, output = kd("validate", path)
    assert code == 0, output


def test_spec_problems_and_the_eval_text_are_reported_at_once(bad_spec):
    path = bad_spec(both(put("eval.text", "gone.txt"), put("phases.0.lr", float("inf")),
                         put("phases.0.seed", -1), put("teacher.vocab_size", "64")))
    code, output = kd("validate", path)
    assert_user_error(code, output, path, ["gone.txt: no such text file"], "eval.text")
    for key in ("phases[0].lr", "phases[0].seed", "teacher.vocab_size"):
        assert f"{path}: {key}: " in output, output
    assert len(output.strip().splitlines()) == 4, output


# --- the parameter contract -------------------------------------------------------------------------


def test_params_types_follow_toml():
    from pydantic import ValidationError

    from kdcore.plugin.params import Params, Seed

    class P(Params):
        x: float = 0.0
        n: int = 0
        seed: Seed = 0

    assert P(x=3).x == 3.0 and isinstance(P(x=3).x, float)  # an int is fine where a float is expected
    for bad in ({"x": "3"}, {"x": True}, {"x": float("inf")}, {"x": float("-inf")}, {"x": float("nan")},
                {"n": "3"}, {"n": True}, {"n": 3.0}, {"n": 2**63}, {"n": -(2**63) - 1}, {"seed": -1}, {"seed": 2**63},
                {"y": 1}):
        with pytest.raises(ValidationError):
            P(**bad)
    assert P(n=2**63 - 1, seed=2**63 - 1).n == 2**63 - 1


def test_a_params_validator_names_its_key_relative_to_itself():
    from pydantic import ValidationError, model_validator

    from kdcore.plugin.params import ParamError, Params
    from kdcore.config.load import pydantic_problems

    class Inner(Params):
        low: int = 0
        high: int = 1

        @model_validator(mode="after")
        def _order(self):
            if self.high <= self.low:
                raise ParamError("high", "must be > low")
            return self

    class Outer(Params):
        parts: list[Inner]

    with pytest.raises(ValidationError) as info:
        Outer(parts=[{}, {"low": 2, "high": 1}])
    assert [(p.key, p.message) for p in pydantic_problems(info.value, prefix="datasets.x.sampler")] == [
        ("datasets.x.sampler.parts[1].high", "must be > low")]


# --- core reads no plugin's parameters: each component checks its own --------------------------------


def _inline_registry(hook: str, name: str, target, params):
    from kdcore.plugin.hookspecs import hookimpl
    from kdcore.plugin.registry import load_registry

    class Plugin:
        pass

    def register_it(self, register):
        register(name, target, params)

    setattr(Plugin, hook, hookimpl(register_it))
    return load_registry(extra_plugins=[Plugin()])


def test_a_loss_named_temperature_is_its_own_business(tiny_spec):
    """Core used to refuse any loss with a `temperature` parameter != 1 on top-k targets."""
    from kdcore.stages.builder import Builder
    from kdcore.api import Params
    from kdcore.config.load import parse_spec
    from kd_plugins.losses import MSE

    class SoftMSEParams(Params):
        temperature: float = 1.0  # scales nothing that top-k targets cannot give

    registry = _inline_registry("kd_register_losses", "soft-mse", lambda p, ctx: MSE(p), SoftMSEParams)
    tiny_spec["datasets"]["noise"].update(logits="topk", topk=8)
    tiny_spec["phases"][0]["losses"] = [{"name": "soft-mse", "temperature": 2.0}]
    builder = Builder(parse_spec(tiny_spec, registry=registry))
    assert [name for name, _, _ in builder.losses(0)] == ["soft-mse"]
    assert checks.phase_problems(builder.spec, 0, builder.student(6)) == []
    tiny_spec["phases"][0]["losses"] = [{"name": "kl", "temperature": 2.0}]  # kl refuses it itself
    with pytest.raises(KDError, match=r"phases\[0\]\.losses\[0\]\.temperature: must be 1 with top-k targets"):
        Builder(parse_spec(tiny_spec, registry=registry)).losses(0)


def test_a_sampler_param_named_text_is_its_own_business(tiny_spec):
    """Core used to read any sampler's `text` parameter as a path and compare it with eval.text."""
    from kdcore.stages.builder import Builder
    from kdcore.api import Params
    from kdcore.config.load import parse_spec
    from kd_plugins.samplers import RandomIds, RandomIdsParams

    class LabelledParams(Params):
        text: str = "builtin:eval.txt"  # a label, not a file this sampler reads

    registry = _inline_registry("kd_register_samplers", "labelled",
                                lambda p, ctx: RandomIds(RandomIdsParams(), ctx), LabelledParams)
    tiny_spec["datasets"]["noise"]["sampler"] = {"name": "labelled"}
    builder = Builder(parse_spec(tiny_spec, registry=registry))
    assert builder.sampler("noise").produces == "ids"
    assert checks.eval_text_problems(builder.spec) == []  # its `text` is no TextFile: no file it reads


def test_the_component_sees_the_context_it_is_checked_against(tiny_spec):
    from kdcore.stages.builder import Builder
    from kdcore.config.load import parse_spec
    from kdcore.texts import resolve_text

    from kd_plugins.losses import KL, KLParams

    seen = []

    def spy(params, ctx):
        seen.append(ctx)
        return KL(params, ctx)

    registry = _inline_registry("kd_register_losses", "kl-spy", spy, KLParams)
    tiny_spec["datasets"]["noise"].update(logits="topk", topk=8)
    tiny_spec["phases"][0]["losses"] = [{"name": "kl-spy"}]
    builder = Builder(parse_spec(tiny_spec, registry=registry))
    builder.losses(0)
    builder.sampler("noise")
    assert seen[0].logits == "topk" and seen[0].vocab_size == 64 and seen[0].max_seq_len == 6
    assert builder.context(6, eval_texts=builder.eval_texts).eval_texts == (resolve_text("builtin:eval.txt").resolve(),)


# --- kd plugins --spec ------------------------------------------------------------------------------


ZIPF_PLUGIN = (
    "from kdcore.api import Params\n"
    "from kdcore.plugin.hookspecs import hookimpl\n\n\n"
    "class ZipfParams(Params):\n    \"\"\"Zipf-like ids.\"\"\"\n\n    exponent: float = 1.1\n\n\n"
    "@hookimpl\ndef kd_register_samplers(register):\n    register('zipf-probe', 'nowhere:Zipf', ZipfParams)\n"
)


def test_kd_plugins_lists_the_plugins_a_spec_names(bad_spec):
    path = bad_spec(both(plugin_file("zipf_probe.py", ZIPF_PLUGIN), put("phases.0.lr", "broken elsewhere")))
    code, output = kd("plugins", "--kind", "sampler", "--spec", path)
    assert code == 0, output
    row = next(line for line in output.splitlines() if "zipf-probe" in line)
    assert "zipf_probe.py" in row and "exponent=1.1" in row and "Zipf-like ids." in row
    code, output = kd("plugins", "--kind", "sampler")
    assert code == 0 and "zipf-probe" not in output and "uniform" in output


def test_kd_plugins_with_a_spec_whose_plugin_fails(bad_spec):
    path = bad_spec(plugin_file("broken_plugin.py", "def f(:\n"))
    assert_user_error(*kd("plugins", "--spec", path), path, ["cannot import plugin file", "broken_plugin.py"], "plugins")
    path = bad_spec(put("plugins", "zipf_probe"))
    assert_user_error(*kd("plugins", "--spec", path), path, ["must be a list of module names or .py files"], "plugins")



def test_a_spec_that_is_a_fifo_is_refused_without_hanging(tmp_path):
    """A named pipe would block the read forever: refused at once."""
    import os

    fifo = tmp_path / "spec.toml"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "kdcore", "validate", str(fifo)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and f"{fifo}: not a regular file" in proc.stderr and "Traceback" not in proc.stderr


def test_overwrite_through_a_symlinked_store_is_refused_before_anything_is_deleted(tiny_spec, write_spec, tmp_path):
    from kdcore.config.load import load_spec
    from kdcore.stages.generate import generate

    real = tmp_path / "elsewhere" / "noise"
    generate(load_spec(write_spec({**tiny_spec, "store_dir": str(real.parent)}, "real.toml")), "noise")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "noise").symlink_to(real)
    other = {**tiny_spec, "datasets": {"noise": {**tiny_spec["datasets"]["noise"], "seed": 7}}}
    before = sorted(p.relative_to(real) for p in real.rglob("*"))
    code, output = kd("generate", "--overwrite", write_spec(other, "other.toml"))
    said = " ".join(output.split())
    assert code == 1 and "Traceback" not in output
    assert f"{tmp_path / 'store' / 'noise'} is a symbolic link (to {real})" in said and "nothing was changed" in said
    assert sorted(p.relative_to(real) for p in real.rglob("*")) == before
