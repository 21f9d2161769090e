"""The BioGPT decoder: embeddings -> attention -> MLP -> block -> decoder -> heads.

A GPT-2-style pre-LayerNorm Transformer with the fairseq details both releases compute with:
token embeddings scaled by sqrt(hidden), learned positions offset by the padding index, exact
GELU, LayerNorm eps 1e-5 and an output projection tied to the token embedding. Module and
parameter names follow the Hugging Face layout (`biogpt.layers.0.self_attn.q_proj.weight`...)
so its state dicts load without renaming; `biogpt.checkpoint.pipeline` maps the other layouts.

Shapes in comments: B batch, T new tokens, S cached + new tokens, H hidden, nh heads,
hd head dim, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biogpt.cache import KVCache, padding_positions
from biogpt.config import ModelConfig
from biogpt.dropout import attention_with_dropout, dropout
from biogpt.errors import BioGPTError
from biogpt.labels import IGNORE_INDEX, last_real_index, next_token_targets

# --- Building blocks ----------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention over the new tokens and whatever the cache holds."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        # Hugging Face's order of declaration, so freshly built state dicts list keys alike.
        self.k_proj = nn.Linear(h, h)
        self.v_proj = nn.Linear(h, h)
        self.q_proj = nn.Linear(h, h)
        self.out_proj = nn.Linear(h, h)

    def forward(
        self, x: Tensor, mask: Tensor | None, cache: KVCache | None = None, layer: int = 0
    ) -> Tensor:
        b, t, h = x.shape

        def heads(y: Tensor) -> Tensor:
            return y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if cache is not None:
            k, v = cache.write(layer, k, v)  # (B, nh, S, hd): the cached keys and the new ones
        y = attend(q, k, v, mask, self.dropout if self.training else 0.0)  # (B, nh, T, hd)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, h))


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> Tensor:
    """Scaled dot-product attention of queries (B, nh, T, hd) over keys and values
    (B, nh, S, hd): (B, nh, T, hd). `mask` (B, 1, T, S) is True where a query may attend;
    None means plain causal when no cache precedes the queries (S == T), all keys otherwise.
    Scores are scaled by hd ** -0.5, SDPA's default."""
    t = q.shape[2]
    if dropout_p > 0.0 and q.device.type == "cpu":
        return attention_with_dropout(q, k, v, mask, dropout_p)  # SDPA's CPU path, faster
    if t == 1 and q.dtype in HALF_DTYPES and q.device.type == "cpu" and k.shape[2] > 32:
        return one_query_attention_fp32(q, k, v, mask)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None and t > 1
    )


HALF_DTYPES = (torch.bfloat16, torch.float16)


def one_query_attention_fp32(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention of one new token over a bf16 or fp16 cache, computed in fp32 (B, nh, 1, hd).

    On the CPU, SDPA's half-precision kernels for a single query are slower than two small
    fp32 matmuls past a few dozen cached tokens, and fall further behind as the cache grows
    (`benchmarks/decode_overhead.py` times decoding steps); the fp32 matmuls are also the
    more accurate. Below that, SDPA's kernel is the faster."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # (B, nh, 1, S)
    return torch.matmul(scores.softmax(dim=-1), v.float()).to(q.dtype)


class DecoderLayer(nn.Module):
    """x + drop(attn(LN(x))), then x + drop(fc2(drop_act(gelu(fc1(LN(x))))))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, f, eps = config.hidden_size, config.intermediate_size, config.layer_norm_eps
        self.self_attn = Attention(config)
        self.self_attn_layer_norm = nn.LayerNorm(h, eps=eps)
        self.fc1 = nn.Linear(h, f)
        self.fc2 = nn.Linear(f, h)
        self.final_layer_norm = nn.LayerNorm(h, eps=eps)
        self.dropout = config.dropout
        self.activation_dropout = config.activation_dropout

    def forward(
        self, x: Tensor, mask: Tensor | None, cache: KVCache | None = None, layer: int = 0
    ) -> Tensor:
        a = self.self_attn(self.self_attn_layer_norm(x), mask, cache, layer)
        x = x + dropout(a, self.dropout, self.training)
        m = F.gelu(self.fc1(self.final_layer_norm(x)))  # exact erf GELU
        m = self.fc2(dropout(m, self.activation_dropout, self.training))
        return x + dropout(m, self.dropout, self.training)


class Decoder(nn.Module):
    """Embeddings, the stack of layers and the final LayerNorm (`biogpt.*` in checkpoints)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        # fairseq reserves rows 0 and 1 (padding uses row 1), hence max_positions + 2 rows.
        self.embed_positions = nn.Embedding(config.max_positions + 2, h)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.layer_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """Final hidden states (B, T, H) and, if asked, the input of every layer plus the output.

        `attention_mask` (B, T) marks the real tokens among `input_ids` only; tokens already
        in `cache` keep the mask they were written with.
        """
        b, t = input_ids.shape
        past = cache.length if cache is not None else 0
        if cache is not None and past + t > cache.capacity:
            raise BioGPTError(f"KV cache holds {cache.capacity} positions; {past + t} are needed")
        real = (
            attention_mask.bool()
            if attention_mask is not None
            else torch.ones(b, t, dtype=torch.bool, device=input_ids.device)
        )
        if position_ids is None:
            if cache is not None:
                position_ids = cache.positions(real)
            else:
                position_ids = padding_positions(real, self.config.pad_token_id)
        # Positions never exceed past + t + 1, so only long inputs need the exact (syncing) check.
        too_long = past + t > self.config.max_positions
        if too_long and int(position_ids.max()) >= self.embed_positions.num_embeddings:
            raise BioGPTError(
                f"sequence needs position {int(position_ids.max()) - 1} but the model has "
                f"{self.config.max_positions} positions"
            )

        padded = attention_mask is not None and not bool(real.all())
        mask = self._attention_mask(real, cache, padded)
        if cache is not None:
            cache.padded = cache.padded or padded

        x = self.embed_tokens(input_ids) * self.config.embed_scale + self.embed_positions(
            position_ids
        )
        x = dropout(x, self.config.dropout, self.training)
        hidden: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                hidden.append(x)
            x = layer(x, mask, cache, i)
        x = self.layer_norm(x)
        if cache is not None:
            cache.advance(real)
        if output_hidden_states:
            hidden.append(x)
        return x, tuple(hidden) if output_hidden_states else None

    @staticmethod
    def _attention_mask(real: Tensor, cache: KVCache | None, padded: bool) -> Tensor | None:
        """Boolean mask (B, 1, T, S), True where a query may attend; None when plain causal.

        Keys are the cached slots followed by the new tokens. A query sees the keys at or
        before its own slot that hold real tokens. Every query also sees itself, so a padding
        query has at least one key and softmax stays finite (its output is never used).
        """
        t = real.shape[1]
        past = cache.length if cache is not None else 0
        unpadded = not padded and (cache is None or not cache.padded)
        if unpadded and (past == 0 or t == 1):
            return None  # plain causal (or one query that may see every key)
        device = real.device
        keys = real if cache is None else torch.cat([cache.mask[:, :past], real], dim=1)
        slot = torch.arange(past + t, device=device)
        query_slot = past + torch.arange(t, device=device)
        causal = slot[None, :] <= query_slot[:, None]  # (T, S)
        own = slot[None, :] == query_slot[:, None]
        return ((causal & keys[:, None, :]) | own)[:, None]  # (B, 1, T, S), same for every head

    def init_weights(self) -> None:
        """Fresh weights as fairseq initialises them: N(0, 0.02), zero biases, zero padding row."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.embed_tokens.weight[self.config.pad_token_id].zero_()


# --- Models -------------------------------------------------------------------------------


@dataclass
class ModelOutput:
    """What a forward pass returns. `logits` is (B, T, V) for the LM, (B, C) or (B, T, C) for heads."""

    logits: Tensor
    loss: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    cache: KVCache | None = None


class DecoderModel(nn.Module):
    """What the LM and the classification models share: the config and the decoder.

    Loading, saving and decoding are not the architecture's: `biogpt.api` adds them to the
    public classes (`biogpt.BioGPT`...), and `biogpt.cpu` prepares a model for fast CPU
    inference.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.biogpt = Decoder(config)

    @property
    def device(self) -> torch.device:
        return self.biogpt.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.biogpt.embed_tokens.weight.dtype

    def new_cache(self, batch_size: int, capacity: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` rows and `capacity` positions (default: all)."""
        capacity = capacity or self.config.max_positions
        return KVCache(self.config, batch_size, capacity, self.dtype, self.device)

    def tie_weights(self) -> None:
        """Point a head tied to the token embedding at it again (the LM's); others have none."""

    def resize_vocab(self, size: int) -> None:
        """Grow (or shrink) the token embedding to `size` rows, e.g. for the learned prompt
        tokens fine-tuning appends after the pretrained vocabulary.

        New rows are drawn from N(0, s), s the standard deviation of the existing rows, so a
        new token starts at the scale of the trained ones; a tied head follows along.
        """
        head = getattr(self, "output_projection", None)
        if head is not None and not isinstance(head, nn.Linear):
            raise BioGPTError(
                "resize_vocab needs the model's plain layers; this one is prepared for "
                "inference (biogpt.cpu.release(model) first)"
            )
        old = self.biogpt.embed_tokens
        if size == old.num_embeddings:
            return
        weight = old.weight.detach()
        grown = nn.Embedding(
            size,
            weight.shape[1],
            padding_idx=old.padding_idx,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            keep = min(size, weight.shape[0])
            grown.weight[:keep] = weight[:keep]
            if size > keep:
                grown.weight[keep:].normal_(0.0, float(weight[4:].float().std()))
        self.biogpt.embed_tokens = grown
        self.config.vocab_size = size
        if head is not None:
            if self.config.tie_word_embeddings:
                self.tie_weights()
                head.out_features = size
            else:
                new_head = nn.Linear(
                    weight.shape[1], size, bias=False, device=weight.device, dtype=weight.dtype
                )
                with torch.no_grad():
                    new_head.weight[:keep] = head.weight[:keep]
                    if size > keep:
                        new_head.weight[keep:].normal_(0.0, self.config.initializer_range)
                self.output_projection = new_head

    def num_parameters(self) -> int:
        """Parameters, a tied head counted once; the same whether or not the CPU engine prepared it."""
        tied = self.config.tie_word_embeddings
        return sum(
            v.numel()
            for k, v in self.state_dict().items()
            if not (tied and k == "output_projection.weight")
        )


class BioGPT(DecoderModel):
    """BioGPT causal language model: the decoder and an output projection tied to embeddings."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        # A tied head shares the embedding matrix: no need to allocate a matrix of its own.
        device = "meta" if config.tie_word_embeddings else None
        self.output_projection = nn.Linear(
            config.hidden_size, config.vocab_size, bias=False, device=device
        )
        self.biogpt.init_weights()
        if not config.tie_word_embeddings:
            nn.init.normal_(self.output_projection.weight, std=config.initializer_range)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.output_projection.weight = self.biogpt.embed_tokens.weight

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
    ) -> ModelOutput:
        """Logits (B, T, V) of the next token at every position; loss when `labels` are given.

        `labels` (B, T) are usually `input_ids`: the loss predicts token t+1 from tokens <= t
        and skips labels that are -100, the padding id, or masked out by `attention_mask`.
        `logits_to_keep` > 0 computes logits for the last that many positions only
        (decoding needs one); it cannot be combined with `labels`.
        """
        x, hidden = self.biogpt(
            input_ids, attention_mask, position_ids, cache, output_hidden_states
        )
        if logits_to_keep:
            if labels is not None:
                raise BioGPTError("logits_to_keep cannot be combined with labels")
            x = x[:, -logits_to_keep:]
        logits = self.output_projection(x)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, attention_mask, self.config.pad_token_id)
        return ModelOutput(logits=logits, loss=loss, hidden_states=hidden, cache=cache)


def causal_lm_loss(
    logits: Tensor, labels: Tensor, attention_mask: Tensor | None, pad_token_id: int
) -> Tensor:
    """Mean next-token cross-entropy: logits at t predict labels at t+1; padding is skipped."""
    targets = next_token_targets(labels)  # (B, T), the last position has no target
    targets[targets == pad_token_id] = IGNORE_INDEX
    if attention_mask is not None:
        targets[F.pad(attention_mask[:, 1:], (0, 1)) == 0] = IGNORE_INDEX
    scores = logits.float()  # the loss is computed in fp32 whatever the dtype (no copy if fp32)
    return F.cross_entropy(scores.reshape(-1, scores.shape[-1]), targets.reshape(-1))


class BioGPTForSequenceClassification(DecoderModel):
    """Classifies a sequence from the hidden state of its last real token (`score`, no bias)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.biogpt.init_weights()
        nn.init.normal_(self.score.weight, std=config.initializer_range)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """Logits (B, num_labels); cross-entropy loss when `labels` (B,) are given."""
        x, hidden = self.biogpt(input_ids, attention_mask, position_ids, None, output_hidden_states)
        logits = self.score(x)  # (B, T, C)
        last = last_real_index(input_ids != self.config.pad_token_id)  # (B,)
        pooled = logits[torch.arange(input_ids.shape[0], device=logits.device), last]  # (B, C)
        loss = F.cross_entropy(pooled.float(), labels) if labels is not None else None
        return ModelOutput(logits=pooled, loss=loss, hidden_states=hidden)


class BioGPTForTokenClassification(DecoderModel):
    """Labels every token from its hidden state (`classifier`, with bias)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.classifier_dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.biogpt.init_weights()
        nn.init.normal_(self.classifier.weight, std=config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """Logits (B, T, num_labels); loss over real tokens when `labels` (B, T) are given."""
        x, hidden = self.biogpt(input_ids, attention_mask, position_ids, None, output_hidden_states)
        logits = self.classifier(self.classifier_dropout(x))
        loss = None
        if labels is not None:
            targets = labels.clone()
            if attention_mask is not None:
                targets[attention_mask == 0] = IGNORE_INDEX
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1)
            )
        return ModelOutput(logits=logits, loss=loss, hidden_states=hidden)
