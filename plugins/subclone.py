"""Weight subcloning (Samragh et al. 2023, arXiv 2312.09299): a smaller Llama cut out of the teacher.

The student keeps a subset of the teacher's weights: one set of residual dimensions for the whole
stream (embedding, every block, final norm, head), whole attention heads per KV group (head_dim
unchanged), the highest-ranked MLP neurons per block, and evenly spaced blocks including the first
and the last. Everything is ranked by weight norms alone: no text, no samples (docs/DESIGN.md says
why). Keeping every dimension, head, neuron and block gives back the teacher exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdcore.api import ParamError


@dataclass
class Selection:
    """What the student keeps of the teacher, as teacher indices, in the student's order."""

    blocks: list[int]
    dims: torch.Tensor  # residual dimensions, ascending
    kv_heads: list[torch.Tensor]  # per kept block: the teacher's KV heads, ascending
    heads: list[torch.Tensor]  # per kept block: query heads, grouped by the student's KV head
    neurons: list[torch.Tensor]  # per kept block: MLP neurons, ascending
    norm_scale: float  # every RMSNorm weight is multiplied by this


# --- the teacher, and whether the student fits inside it ----------------------------------------


def llama_config_of(teacher):
    """The teacher's transformers LlamaConfig (read without its weights), or a ParamError saying why a
    subclone cannot use it."""
    config = getattr(teacher, "config", None)
    kind = getattr(config, "model_type", None)
    if kind != "llama":
        what = f"a '{kind}' model" if kind else "not a transformers model with a config"
        raise ParamError("init", f"'subclone' needs a Llama-architecture teacher; teacher "
                         f"'{getattr(teacher, 'name', '?')}' is {what}")
    return config


def plan(student, teacher) -> str:
    """Check from the configs alone that the student fits inside the teacher (ParamError naming the
    student's key if not); what the subclone will keep, for `kd validate`."""
    config, mine = llama_config_of(teacher), student.body.model.config
    problems = shape_problems(mine, config)
    if problems:
        raise ParamError(*problems[0])
    blocks = ", ".join(map(str, evenly_spaced(mine.num_hidden_layers, config.num_hidden_layers)))
    tied = ", head = embedding (tied in the teacher)" if getattr(config, "tie_word_embeddings", False) else ""
    return (f"subclone of teacher '{teacher.name}': blocks {blocks} of {config.num_hidden_layers}, "
            f"{mine.hidden_size} of {config.hidden_size} residual dims, {mine.num_attention_heads} of "
            f"{config.num_attention_heads} heads ({mine.num_key_value_heads} of {config.num_key_value_heads} KV), "
            f"{mine.intermediate_size} of {config.intermediate_size} MLP neurons per block, chosen by weight norms "
            f"when training starts{tied}")


def rope_of(config) -> tuple[float, str]:
    """(rope_theta, rope_type) of a transformers config, 4.x or 5.x."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta), params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def shape_problems(student, teacher) -> list[tuple[str, str]]:
    """(student key, message) for each way the student's LlamaConfig does not fit in the teacher's."""
    hd = head_dim_of(teacher)
    theta, rope_type = rope_of(teacher)
    problems = []
    if getattr(teacher, "attention_bias", False) or getattr(teacher, "mlp_bias", False) or teacher.hidden_act != "silu":
        problems.append(("init", "the teacher's blocks have biases or a non-SiLU MLP, which the llama student lacks"))
    if rope_type != "default":
        problems.append(("init", f"the teacher's rotary embedding is '{rope_type}'-scaled; the llama student's is plain"))
    if student.hidden_size > teacher.hidden_size:
        problems.append(("hidden_size", f"{student.hidden_size} is wider than the teacher's {teacher.hidden_size}"))
    if student.hidden_size % hd:
        problems.append(("hidden_size", f"{student.hidden_size} is not a multiple of the teacher's head_dim ({hd}): "
                                        f"a subclone keeps whole heads; use e.g. {max(hd, student.hidden_size // hd * hd)}"))
    elif student.num_attention_heads * hd != student.hidden_size:
        problems.append(("heads", f"{student.num_attention_heads} heads of {student.hidden_size} dims are "
                                  f"{student.hidden_size // student.num_attention_heads}-dim heads; the teacher's are "
                                  f"{hd}-dim: use heads = {student.hidden_size // hd}"))
    group, teacher_group = (student.num_attention_heads // student.num_key_value_heads,
                            teacher.num_attention_heads // teacher.num_key_value_heads)
    if student.num_key_value_heads > teacher.num_key_value_heads:
        problems.append(("kv_heads", f"{student.num_key_value_heads} KV heads (the default is heads), more than the "
                                     f"teacher's {teacher.num_key_value_heads}"))
    elif group > teacher_group:
        problems.append(("kv_heads", f"{student.num_key_value_heads} KV heads each serve {group} query heads; the "
                                     f"teacher's serve {teacher_group}: use more KV heads"))
    for key, mine, theirs in (("layers", student.num_hidden_layers, teacher.num_hidden_layers),
                              ("heads", student.num_attention_heads, teacher.num_attention_heads),
                              ("intermediate_size", student.intermediate_size, teacher.intermediate_size)):
        if mine > theirs:
            problems.append((key, f"{mine} is more than the teacher's {theirs}"))
    if not math.isclose(rope_of(student)[0], theta, rel_tol=1e-6):
        problems.append(("rope_theta", f"{rope_of(student)[0]:g} differs from the teacher's {theta:g}: set rope_theta = {theta:g}"))
    if not math.isclose(student.rms_norm_eps, teacher.rms_norm_eps, rel_tol=1e-6):  # configs hold float32 1e-5
        problems.append(("rms_norm_eps", f"{student.rms_norm_eps:g} differs from the teacher's "
                                         f"{teacher.rms_norm_eps:g}: set rms_norm_eps = {teacher.rms_norm_eps:g}"))
    return problems


# --- ranking by weight norms --------------------------------------------------------------------


def _share(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Each residual dimension's share of a matrix's squared norm (summing over `dim`)."""
    sq = weight.float().pow(2).sum(dim)
    return sq / sq.sum()


def _top(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, ascending (ties go to the lower index)."""
    return torch.argsort(score, descending=True, stable=True)[:k].sort().values


def residual_scores(model) -> torch.Tensor:
    """(D,) how much every matrix reading or writing the residual stream uses each dimension.

    Each matrix votes with its own normalised shares, so no single kind of weight dominates; reads
    through an RMSNorm count its gain, as the norm's weight scales that dimension before the read."""
    m = model.model
    score = _share(m.embed_tokens.weight, 0) + _share(model.lm_head.weight * m.norm.weight, 0)
    for block in m.layers:
        attn, mlp = block.self_attn, block.mlp
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            score += _share(proj.weight * block.input_layernorm.weight, 0)
        for proj in (mlp.gate_proj, mlp.up_proj):
            score += _share(proj.weight * block.post_attention_layernorm.weight, 0)
        score += _share(attn.o_proj.weight, 1) + _share(mlp.down_proj.weight, 1)
    return score


def evenly_spaced(count: int, total: int) -> list[int]:
    """`count` block indices from `total`, evenly spaced, the first and (for count > 1) the last included."""
    if count == 1:
        return [0]
    return [(i * (total - 1) + (count - 1) // 2) // (count - 1) for i in range(count)]


def select_heads(block, dims: torch.Tensor, config, kv_heads: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's `kv_heads` strongest KV heads and, in each, its `group` strongest query heads.

    A query head's strength is the norm of its output-value circuit W_O,h W_V,kv(h) on the kept dims
    (how much it can write into the residual stream); a KV head's is the sum over the query heads kept
    with it."""
    hd, H, KV = head_dim_of(config), config.num_attention_heads, config.num_key_value_heads
    gain = block.input_layernorm.weight[dims].float()
    v = block.self_attn.v_proj.weight.float()[:, dims].mul(gain).view(KV, hd, -1)
    o = block.self_attn.o_proj.weight.float()[dims].view(len(dims), H, hd).transpose(0, 1)  # (H, d, hd)
    ov = torch.linalg.matrix_norm(o @ v.repeat_interleave(H // KV, 0))  # (H,)
    per_group = ov.view(KV, H // KV)
    strongest = per_group.sort(dim=1, descending=True, stable=True).values[:, :group].sum(1)
    kept_kv = _top(strongest, kv_heads)
    heads = [g * (H // KV) + _top(per_group[g], group) for g in kept_kv.tolist()]
    return kept_kv, torch.cat(heads)


def select_neurons(block, dims: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` MLP neurons with the largest |gate| * |up| * |down| on the kept dims."""
    mlp, gain = block.mlp, block.post_attention_layernorm.weight[dims].float()
    gate = mlp.gate_proj.weight.float()[:, dims].mul(gain).norm(dim=1)
    up = mlp.up_proj.weight.float()[:, dims].mul(gain).norm(dim=1)
    down = mlp.down_proj.weight.float()[dims].norm(dim=0)
    return _top(gate * up * down, count)


def select(model, student) -> Selection:
    """What a student of LlamaConfig `student` keeps of the teacher `model`."""
    config = model.config
    dims = _top(residual_scores(model), student.hidden_size)
    blocks = evenly_spaced(student.num_hidden_layers, config.num_hidden_layers)
    group = student.num_attention_heads // student.num_key_value_heads
    picked = [select_heads(model.model.layers[b], dims, config, student.num_key_value_heads, group) for b in blocks]
    neurons = [select_neurons(model.model.layers[b], dims, student.intermediate_size) for b in blocks]
    return Selection(blocks, dims, [kv for kv, _ in picked], [h for _, h in picked], neurons, norm_scale=1.0)


# --- copying ------------------------------------------------------------------------------------


def _rows(heads: torch.Tensor, hd: int) -> torch.Tensor:
    """The projection rows (or o_proj columns) of these heads, head after head."""
    return (heads[:, None] * hd + torch.arange(hd, device=heads.device)).reshape(-1)


def copy_into(student, model, sel: Selection) -> None:
    """Write the selected teacher weights into a LlamaStudent (its float-input `embed` included)."""
    hd = head_dim_of(model.config)
    dims = sel.dims
    teacher, body = model.model, student.body.model

    def put(param: torch.nn.Parameter, value: torch.Tensor) -> None:
        param.copy_(value.to(param.device, param.dtype))

    with torch.no_grad():
        put(student.embed.weight, teacher.embed_tokens.weight[:, dims].T)
        student.embed.bias.zero_()
        put(student.body.lm_head.weight, model.lm_head.weight[:, dims])
        put(body.norm.weight, teacher.norm.weight[dims] * sel.norm_scale)
        for mine, b, kv, heads, neurons in zip(body.layers, sel.blocks, sel.kv_heads, sel.heads, sel.neurons):
            theirs = teacher.layers[b]
            q_rows, kv_rows = _rows(heads, hd), _rows(kv, hd)
            put(mine.self_attn.q_proj.weight, theirs.self_attn.q_proj.weight[q_rows][:, dims])
            put(mine.self_attn.k_proj.weight, theirs.self_attn.k_proj.weight[kv_rows][:, dims])
            put(mine.self_attn.v_proj.weight, theirs.self_attn.v_proj.weight[kv_rows][:, dims])
            put(mine.self_attn.o_proj.weight, theirs.self_attn.o_proj.weight[dims][:, q_rows])
            put(mine.mlp.gate_proj.weight, theirs.mlp.gate_proj.weight[neurons][:, dims])
            put(mine.mlp.up_proj.weight, theirs.mlp.up_proj.weight[neurons][:, dims])
            put(mine.mlp.down_proj.weight, theirs.mlp.down_proj.weight[dims][:, neurons])
            put(mine.input_layernorm.weight, theirs.input_layernorm.weight[dims] * sel.norm_scale)
            put(mine.post_attention_layernorm.weight, theirs.post_attention_layernorm.weight[dims] * sel.norm_scale)


def describe(teacher, config, sel: Selection) -> str:
    """One line for `kd validate`: where the student's initial weights come from."""
    tied = ", head = embedding (tied in the teacher)" if getattr(config, "tie_word_embeddings", False) else ""
    blocks = ", ".join(map(str, sel.blocks))
    return (f"subclone of teacher '{teacher.name}': blocks {blocks} of {config.num_hidden_layers}, "
            f"{len(sel.dims)} of {config.hidden_size} residual dims, {len(sel.heads[0])} of "
            f"{config.num_attention_heads} heads ({len(sel.kv_heads[0])} of {config.num_key_value_heads} KV), "
            f"{len(sel.neurons[0])} of {config.intermediate_size} MLP neurons per block; ranked by weight norms, "
            f"norms x{sel.norm_scale:.3g}{tied}")


def subclone_into(student, teacher) -> str:
    """Initialise a LlamaStudent from `teacher`'s weights; the description of what it kept."""
    plan(student, teacher)
    model = teacher.model
    sel = select(model, student.body.model.config)
    copy_into(student, model, sel)
    return describe(teacher, model.config, sel)
