"""Student architectures: the 2023 families (CrossBaby_1/2, DoubleCross, TransformerBaby) and a small Llama.

Every student is `embed = Linear(vocab, d)` over float vocab rows followed by a body. `revert()` folds
`embed` into an `Embedding(vocab, d)` with weight `embed.weight.T + bias`, so the student reads token
ids and computes the same function. The llama student reverts to a transformers `LlamaForCausalLM`
(a standard folder when saved); the others to `RevertedStudent`, the body behind an Embedding, which
`kdcore.run.artifact` saves generically and rebuilds through this plugin. The llama student with
`init = "subclone"` starts from a cut-down copy of a Llama teacher (`kd_plugins.subclone`); the
others start from random weights.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from kdcore.api import BuildContext, CausalLMStudent, Inputs, ParamError, Params, gib, last_positions, memory_bytes


# --- parameters -----------------------------------------------------------------------------------


class StudentParams(Params):
    """Parameters every student accepts."""

    vocab_size: int | None = Field(None, gt=0, description="if set, must equal the teacher's vocabulary")


class CrossBabyParams(StudentParams):
    """CrossBaby_1: width of the ReLU word embedding."""

    word_embed: int = Field(50, gt=0, description="width w of the word embedding")


class CrossBaby2Params(StudentParams):
    """CrossBaby_2: word embedding width and the hidden width before the output layer."""

    word_embed: int = Field(50, gt=0, description="width w of the word embedding")
    up_dim: int = Field(500, gt=0, description="width of the layer before the vocab logits")


class DoubleCrossParams(StudentParams):
    """DoubleCrossBaby: two rounds of CrossBaby's interaction (w -> 2w -> 5w), then a per-position head."""

    word_embed: int = Field(50, gt=0, description="width w of the word embedding")


class LearnedDoubleCrossParams(DoubleCrossParams):
    """DoubleCrossBaby with a learned Linear(S, 1) across positions instead of their sum."""


class TransformerBabyParams(StudentParams):
    """TransformerBaby: a small post-norm nn.TransformerEncoder over all S positions."""

    d_model: int = Field(64, gt=0)
    nhead: int = Field(2, gt=0)
    num_layers: int = Field(2, gt=0)
    dim_feedforward: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.d_model % self.nhead:
            raise ParamError("nhead", f"d_model ({self.d_model}) must be divisible by nhead ({self.nhead})")
        return self


class LlamaParams(StudentParams):
    """A small causal Llama (RMSNorm, RoPE, SwiGLU, grouped-query attention)."""

    hidden_size: int = Field(128, gt=0)
    layers: int = Field(2, gt=0)
    heads: int = Field(4, gt=0)
    kv_heads: int | None = Field(None, gt=0, description="default: heads (no grouped-query attention)")
    intermediate_size: int | None = Field(
        None, gt=0, description="default: 8/3 * hidden_size rounded up to a multiple of 64"
    )
    rope_theta: float = Field(10000.0, gt=0)
    rms_norm_eps: float = Field(1e-6, gt=0)
    init: Literal["random", "subclone"] = Field(
        "random", description="'subclone': start from a cut-down copy of the teacher's weights (a Llama teacher)"
    )

    @model_validator(mode="after")
    def _heads_fit(self):
        if self.hidden_size % self.heads:
            raise ParamError("heads", f"hidden_size ({self.hidden_size}) must be divisible by heads ({self.heads})")
        if self.heads % (self.kv_heads or self.heads):
            raise ParamError("kv_heads", f"heads ({self.heads}) must be divisible by kv_heads ({self.kv_heads})")
        return self


# --- bodies: everything after the first layer -----------------------------------------------------


class StudentBody(nn.Module):
    """Maps embedded rows (B, S, width) and the validity mask (B, S) to logits.

    Class attributes: `name` (as registered), `Params`, `positions` (the target positions it can
    learn from) and `fixed_length` (it flattens all max_seq_len positions, so shorter input is padded).
    """

    name: str
    Params: type[StudentParams]
    positions: tuple[str, ...] = ("last",)
    fixed_length: bool = True

    def __init__(self, vocab_size: int, max_seq_len: int, width: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.width = width


def interaction_rows(e: torch.Tensor, s: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """`linear(p.reshape(B, S, S*w))` for p = einsum('bij,bkm->bikj', e, e), without building p.

    With s = e.sum(-1), p[b,i,k,j] = e[b,i,j] * s[b,k], so each row's dot product factors into
    (B, w, w) work: O(S*w^2) per sample instead of the original's O(S^2*w^2) time and S^2*w memory.
    """
    w_out = linear.out_features
    weight = linear.weight.view(w_out, s.shape[1], e.shape[2])  # [o, k, j]
    per_sample = torch.einsum("okj,bk->bjo", weight, s)
    return e @ per_sample + linear.bias


class CrossBabyBody(StudentBody):
    name = "crossbaby"
    Params = CrossBabyParams

    def __init__(self, params: CrossBabyParams, vocab_size: int, max_seq_len: int):
        w, S = params.word_embed, max_seq_len
        super().__init__(vocab_size, max_seq_len, w)
        self.cross = nn.Linear(S * w, w)
        self.mix = nn.Linear(S * w, w)
        self.out = nn.Linear(w, vocab_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, positions: str) -> torch.Tensor:
        e = torch.relu(x)
        h = torch.relu(interaction_rows(e, e.sum(-1), self.cross))
        return self.out(torch.relu(self.mix(h.flatten(1))))


class CrossBaby2Body(StudentBody):
    name = "crossbaby2"
    Params = CrossBaby2Params

    def __init__(self, params: CrossBaby2Params, vocab_size: int, max_seq_len: int):
        w, S = params.word_embed, max_seq_len
        super().__init__(vocab_size, max_seq_len, w)
        self.rows_i, self.flat_i = nn.Linear(S * w, w), nn.Linear(S * w, w)
        self.rows_k, self.flat_k = nn.Linear(S * w, w), nn.Linear(S * w, w)
        self.rows_j, self.flat_j = nn.Linear(S * S, w), nn.Linear(w * w, w)
        self.up = nn.Linear(3 * w, params.up_dim)
        self.out = nn.Linear(params.up_dim, vocab_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, positions: str) -> torch.Tensor:
        e = torch.relu(x)
        s = e.sum(-1)  # p[b,i,k,j] = e[b,i,j] * s[b,k]; each reading below factors through it
        # rows i: p as (B, S_i, S_k*w)
        h_i = torch.relu(interaction_rows(e, s, self.rows_i))
        # rows k: p as (B, S_k, S_i*w); row k is s[b,k] times the flattened e
        row_k = F.linear(e.flatten(1), self.rows_k.weight)
        h_k = torch.relu(s[:, :, None] * row_k[:, None, :] + self.rows_k.bias)
        # rows j: p as (B, w_j, S_i*S_k)
        weight_j = self.rows_j.weight.view(-1, self.max_seq_len, self.max_seq_len)  # [o, i, k]
        per_sample = torch.einsum("oik,bk->bio", weight_j, s)
        h_j = torch.relu(torch.einsum("bij,bio->bjo", e, per_sample) + self.rows_j.bias)
        readings = ((self.flat_i, h_i), (self.flat_k, h_k), (self.flat_j, h_j))
        reduced = [torch.relu(flat(h.flatten(1))) for flat, h in readings]
        return self.out(torch.relu(self.up(torch.cat(reduced, -1))))


class DoubleCrossBody(StudentBody):
    """Two rounds of the interaction, then a head at every position, summed over positions."""

    name = "double-cross"
    Params = DoubleCrossParams

    def __init__(self, params: DoubleCrossParams, vocab_size: int, max_seq_len: int):
        w, S = params.word_embed, max_seq_len
        super().__init__(vocab_size, max_seq_len, w)
        self.cross1 = nn.Linear(S * w, 2 * w)
        self.cross2 = nn.Linear(S * 2 * w, 5 * w)
        self.up = nn.Linear(5 * w, 10 * w)
        self.out = nn.Linear(10 * w, vocab_size)

    def per_position(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, V): the head at every position, padding included (as the original's zero rows were)."""
        e = torch.relu(x)
        h1 = torch.relu(interaction_rows(e, e.sum(-1), self.cross1))
        h2 = torch.relu(interaction_rows(h1, h1.sum(-1), self.cross2))
        return self.out(torch.relu(self.up(h2)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, positions: str) -> torch.Tensor:
        return self.per_position(x).sum(1)


class LearnedDoubleCrossBody(DoubleCrossBody):
    """DoubleCross with a learned Linear(S, 1) across positions instead of the sum."""

    name = "learned-double-cross"
    Params = LearnedDoubleCrossParams

    def __init__(self, params: LearnedDoubleCrossParams, vocab_size: int, max_seq_len: int):
        super().__init__(params, vocab_size, max_seq_len)
        self.across = nn.Linear(max_seq_len, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, positions: str) -> torch.Tensor:
        return self.across(self.per_position(x).transpose(1, 2)).squeeze(-1)


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """The fixed (length, width) table of "Attention is all you need": sin on even, cos on odd dims."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    dim = torch.arange(width)
    angle = position / 10000.0 ** ((dim - dim % 2) / width)
    return torch.where(dim % 2 == 0, torch.sin(angle), torch.cos(angle)).float()


class TransformerBabyBody(StudentBody):
    name = "transformer-baby"
    Params = TransformerBabyParams

    def __init__(self, params: TransformerBabyParams, vocab_size: int, max_seq_len: int):
        d = params.d_model
        super().__init__(vocab_size, max_seq_len, d)
        layer = nn.TransformerEncoderLayer(
            d, params.nhead, params.dim_feedforward, params.dropout, batch_first=True
        )
        # nested tensors would drop padded rows only in eval mode; keep train and eval the same
        self.encoder = nn.TransformerEncoder(layer, params.num_layers, enable_nested_tensor=False)
        self.register_buffer("position_table", sinusoidal_positions(max_seq_len, d), persistent=False)
        self.out = nn.Linear(max_seq_len * d, vocab_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, positions: str) -> torch.Tensor:
        h = x * math.sqrt(self.width) + self.position_table
        h = self.encoder(h, src_key_padding_mask=~mask)
        # padded rows carry no information; zero them so only valid positions reach the flatten
        return self.out((h * mask[..., None]).flatten(1))


class LlamaBody(StudentBody):
    name = "llama"
    Params = LlamaParams
    positions = ("last", "all")
    fixed_length = False

    def __init__(self, params: LlamaParams, vocab_size: int, max_seq_len: int):
        from transformers import LlamaConfig, LlamaModel

        h = params.hidden_size
        super().__init__(vocab_size, max_seq_len, h)
        config = LlamaConfig(
            vocab_size=1,  # tokens come in through the student's own `embed`
            hidden_size=h,
            intermediate_size=params.intermediate_size or 64 * math.ceil(8 * h / 3 / 64),
            num_hidden_layers=params.layers,
            num_attention_heads=params.heads,
            num_key_value_heads=params.kv_heads or params.heads,
            max_position_embeddings=max_seq_len,
            rope_theta=params.rope_theta,
            rms_norm_eps=params.rms_norm_eps,
            bos_token_id=None,
            eos_token_id=None,
            use_cache=False,
            attn_implementation="sdpa",
        )
        self.model = LlamaModel(config)
        # LlamaModel always builds a token table; ours is unused, and DDP rejects trainable unused params
        self.model.embed_tokens.requires_grad_(False)
        self.lm_head = nn.Linear(h, vocab_size, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, positions: str) -> torch.Tensor:
        h = self.model(inputs_embeds=x, attention_mask=mask.long(), use_cache=False).last_hidden_state
        if positions == "last":
            h = last_positions(h, mask.sum(1))
        return self.lm_head(h)


def run_body(
    body: StudentBody, x: torch.Tensor, mask: torch.Tensor, pad: torch.Tensor, positions: str
) -> torch.Tensor:
    """The body's logits for embedded rows x (B, S, d), with every padding position set to `pad`."""
    if positions not in body.positions:
        raise ValueError(f"student '{body.name}' predicts positions {body.positions}, not '{positions}'")
    missing = body.max_seq_len - x.shape[1]
    if missing < 0:
        raise ValueError(f"student '{body.name}' takes at most {body.max_seq_len} positions, got {x.shape[1]}")
    if body.fixed_length and missing:
        x = F.pad(x, (0, 0, 0, missing))
        mask = F.pad(mask, (0, missing), value=False)
    return body(torch.where(mask[..., None], x, pad), mask, positions)


# --- the float-input students and their reverted (index-input) form -------------------------------


class FloatInputStudent(nn.Module):
    """A student whose first layer, `embed = Linear(vocab, d)`, reads float vocab rows."""

    body_class: type[StudentBody]
    init_source = "random (seeded by phases[0].seed)"

    def __init__(self, params: StudentParams, ctx: BuildContext):
        super().__init__()
        if params.vocab_size is not None and params.vocab_size != ctx.vocab_size:
            raise ParamError(
                "vocab_size", f"{params.vocab_size} does not match the teacher's vocabulary ({ctx.vocab_size})"
            )
        self.params = params
        body = self.body_class(params, ctx.vocab_size, ctx.max_seq_len)
        self.embed = nn.Linear(ctx.vocab_size, body.width)  # the original's `word_embedding`
        self.body = body

    @property
    def positions(self) -> tuple[str, ...]:
        return self.body.positions

    def forward(self, inputs: Inputs, positions: str = "last") -> torch.Tensor:
        """Logits (B, V) at each sample's last valid position, or (B, S, V) for positions="all"."""
        if inputs.ids is not None:
            # equals embed(one_hot(ids)) without materialising the (B, S, V) rows
            x = F.embedding(inputs.ids, self.embed.weight.T) + self.embed.bias
        else:
            x = self.embed(inputs.soft.to(self.embed.weight.dtype))
        return run_body(self.body, x, inputs.mask(), self.embed.bias, positions)

    def revert(self) -> "RevertedStudent":
        """The same model on token ids: `embed` folded into an Embedding, its bias kept."""
        weight, bias = self.embed.weight, self.embed.bias
        reverted = RevertedStudent(self.params, copy.deepcopy(self.body)).to(weight.device, weight.dtype)
        with torch.no_grad():
            reverted.embedding.weight.copy_(weight.T + bias)
            reverted.pad.copy_(bias)
        return reverted.train(self.training)


class CrossBaby(FloatInputStudent):
    """CrossBaby_1 (2023): pairwise products of ReLU embeddings, two Linear+ReLU, fixed length."""

    body_class = CrossBabyBody


class CrossBaby2(FloatInputStudent):
    """CrossBaby_2 (2023): CrossBaby's interaction read along three axes, fixed length.

    p[b,i,k,j] (S, S, w) is read as rows i (S x S*w), rows k (S x S*w) and rows j (w x S*S). Each
    reading is reduced by Linear(row, w)+ReLU per row, then flattened and Linear(rows*w, w)+ReLU;
    the three w-vectors are concatenated, then Linear(3w, up_dim)+ReLU and Linear(up_dim, vocab).
    """

    body_class = CrossBaby2Body


class DoubleCross(FloatInputStudent):
    """DoubleCrossBaby (2023): two rounds of the interaction (w -> 2w -> 5w), Linear(5w, 10w) and
    Linear(10w, vocab) at every position, summed over the positions; fixed length."""

    body_class = DoubleCrossBody


class LearnedDoubleCross(FloatInputStudent):
    """LearnedDoubleCrossBaby (2023): DoubleCross with a learned Linear(S, 1) across positions."""

    body_class = LearnedDoubleCrossBody


class TransformerBaby(FloatInputStudent):
    """TransformerBaby (2023): scaled linear embedding, sinusoidal positions, encoder, flatten.

    As in the original, the output layer is Linear(S*d_model, vocab): it dominates the parameter count.
    """

    body_class = TransformerBabyBody


class LlamaStudent(FloatInputStudent):
    """A small causal Llama on float rows; learns from the last or from all positions. Reverted, it
    is a transformers LlamaForCausalLM: saved as a standard folder, decoded with its KV cache."""

    body_class = LlamaBody

    def revert(self):
        from transformers import LlamaForCausalLM

        body, weight, bias = self.body, self.embed.weight, self.embed.bias
        config = copy.deepcopy(body.model.config)
        config.vocab_size, config.tie_word_embeddings, config.use_cache = self.embed.in_features, False, True
        config.architectures = ["LlamaForCausalLM"]
        with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the RNG alone
            model = LlamaForCausalLM(config)
        model = model.to(weight.device, weight.dtype)
        with torch.no_grad():
            # exact: (W.T + b)[token] is the float student's W.T[token] + b, add for add
            state = {**body.model.state_dict(), "embed_tokens.weight": weight.T + bias}
            model.model.load_state_dict(state)
            model.lm_head.load_state_dict(body.lm_head.state_dict())
        return CausalLMStudent(model).train(self.training)


class SubclonedLlama(LlamaStudent):
    """The llama student with init = "subclone": its weights are cut out of the teacher's.

    Built, it is checked against the teacher's config alone (its shape fits inside the teacher's);
    the weights are copied in by `init_weights`, when training starts from scratch."""

    def __init__(self, params: LlamaParams, ctx: BuildContext):
        from kd_plugins.subclone import plan

        super().__init__(params, ctx)
        self.init_source = "subclone of the teacher (its weights are copied in when training starts)"
        if ctx.teacher is not None:  # built for a spec: refuse a shape that does not fit, from configs alone
            self.init_source = plan(self, ctx.teacher())

    def init_weights(self, teacher) -> None:
        from kd_plugins.subclone import subclone_into

        self.init_source = subclone_into(self, teacher)


def llama(params: LlamaParams, ctx: BuildContext) -> LlamaStudent:
    """A small causal Llama on float rows; learns from the last or from all positions."""
    H, I = params.hidden_size, params.intermediate_size or 64 * -(-8 * params.hidden_size // (3 * 64))
    count = 2 * ctx.vocab_size * H + params.layers * (4 * H * H + 3 * H * I)  # embed, head, attention, MLP
    need = 16 * count  # float32 weights, their gradients and AdamW's two moments
    if need > memory_bytes():  # refused before a layer is built: 10^6 layers would take the machine down
        raise ParamError("layers" if params.layers > 64 else "hidden_size",
                         f"a student of about {count:,} parameters needs about {gib(need)} to train (weights, "
                         f"gradients, optimizer state), more than this machine's {gib(memory_bytes())}")
    return (SubclonedLlama if params.init == "subclone" else LlamaStudent)(params, ctx)


class RevertedStudent(nn.Module):
    """A student that reads token ids: the float student's `embed` folded into an Embedding."""

    def __init__(self, params: StudentParams, body: StudentBody):
        super().__init__()
        self.params = params
        self.embedding = nn.Embedding(body.vocab_size, body.width)
        self.register_buffer("pad", torch.zeros(body.width))  # embed's output on a zero (padding) row
        self.body = body

    @property
    def positions(self) -> tuple[str, ...]:
        return self.body.positions

    @property
    def max_seq_len(self) -> int:
        return self.body.max_seq_len

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, positions: str = "last") -> torch.Tensor:
        """Logits for ids (B, S) int64: (B, V) at position lengths-1, or (B, S, V) for "all"."""
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        return run_body(self.body, self.embedding(ids), mask, self.pad, positions)


def register_all(register) -> None:
    for student in (CrossBaby, CrossBaby2, DoubleCross, LearnedDoubleCross, TransformerBaby):
        register(student.body_class.name, student, student.body_class.Params)
    register(LlamaBody.name, llama, LlamaParams)
