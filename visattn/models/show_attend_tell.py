"""Show, Attend and Tell: a CNN / ViT encoder and a soft-attention LSTM caption decoder.

Paper: Xu, Ba, Kiros, Cho, Courville, Salakhutdinov, Zemel, Bengio, "Show, Attend and Tell:
Neural Image Caption Generation with Visual Attention", ICML 2015 (arXiv:1502.03044).

The encoder's feature map is pooled to a ``grid_size`` grid of ``P`` region vectors. At every
step the LSTM attends over them (additive attention, :mod:`visattn.layers.additive_attention`),
gates the context with ``β = sigmoid(f_beta(h))`` and predicts the next word from ``h`` (or, with
``deep_output``, from ``E y + L_h h + L_z z`` as in the paper's eq. 7). Token ids follow
:mod:`visattn.data.vocab`: PAD 0, START 1, END 2; the model holds no vocabulary strings.
"""
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError, check_count, is_count, is_number
from ..layers.additive_attention import AdditiveAttention
from ..layers.drop_path import check_rate
from ..layers.lstm_cell import SigmoidLSTMCell
from ..layers.onednn_linear import linear
from ..layers.patch_embed import patch_grid, to_2tuple
from ..modes import eval_mode
from ..registry import built_for_one_size, check_timm_name, create_model, register_model
from .vit import drop_pooled_head

PAD_ID, START_ID, END_ID = 0, 1, 2
GridSize = Union[int, tuple[int, int]]


@dataclass
class DecodedCaptions:
    """Decoder output, one entry per image.

    ``tokens[i]`` holds the word ids without START and END, ``attention[i]`` each word's attention
    map ``(T_i, grid_h, grid_w)`` and ``scores[i]`` the caption's log-probability: beam search's is
    length-normalised (``log p / length ** length_penalty``, END counted), greedy decoding's is not.
    ``finished[i]`` is False for a caption cut at ``max_len`` words before the model ended it; ``finished`` is
    None where that is not known (code written before the field built the captions with three arguments).
    """

    tokens: list[Tensor]
    attention: list[Tensor]
    scores: Tensor
    finished: Optional[Tensor] = None  # (B,) bool

    def to(self, device: Union[str, torch.device]) -> "DecodedCaptions":
        return DecodedCaptions([t.to(device) for t in self.tokens], [a.to(device) for a in self.attention],
                               self.scores.to(device), None if self.finished is None else self.finished.to(device))

    def finished_within(self, max_len: int) -> list[Optional[bool]]:
        """Each caption's ``finished``; where it is not known, True for a caption shorter than ``max_len`` words
        (decoding stops early only at END) and None (not known) for one of ``max_len`` words."""
        if self.finished is not None:
            return self.finished.tolist()
        return [True if len(tokens) < max_len else None for tokens in self.tokens]

    @classmethod
    def empty(cls, device: Union[str, torch.device] = "cpu") -> "DecodedCaptions":
        return cls([], [], torch.zeros(0, device=device), torch.zeros(0, dtype=torch.bool, device=device))


def doubly_stochastic_penalty(alphas: Tensor, mask: Optional[Tensor] = None, weight: float = 1.0) -> Tensor:
    """The paper's regulariser ``λ Σ_p (1 - Σ_t α_tp)²`` per word: summed over the batch's captions and divided by
    their words, as the cross-entropy it is added to is averaged over words. The paper adds it to a caption's
    summed negative log-likelihood; averaged per caption instead, it would weigh as many times the paper's λ as a
    caption has words (89% of the loss at λ = 1).

    Args:
        alphas: ``(B, T, P)`` attention weights of each step.
        mask: ``(B, T)`` bool, ``True`` on real (non-padding) steps; padded steps do not count.
        weight: λ.
    """
    if mask is not None:
        alphas = alphas * mask[..., None]
    words = mask.sum() if mask is not None else alphas.shape[0] * alphas.shape[1]
    return weight * (1.0 - alphas.sum(dim=1)).square().sum() / words


def _word_log_probs(logits: Tensor) -> Tensor:
    """Float32 log-softmax over the vocabulary with PAD and START ruled out: neither can be generated. Float32
    also under autocast, so that greedy and beam scores sum the same numbers (bf16 greedy sums were 0.015 off)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True)  # the caller's stay as they were
    logits[:, PAD_ID:START_ID + 1] = float("-inf")  # a slice: PAD and START are ids 0 and 1
    return logits.log_softmax(dim=-1)


def refuse_token_ids_past_the_vocab(captions: Tensor, vocab_size: int) -> None:
    """One line for a caption token id outside ``0 .. vocab_size - 1``. Ids on the host only: a check of ids on a
    GPU would wait for the device (CUDA's embedding stops with a device-side assert instead)."""
    if captions.device.type == "cpu" and captions.numel() and not 0 <= captions.min() <= captions.max() < vocab_size:
        bad = captions[(captions < 0) | (captions >= vocab_size)][0].item()
        raise ConfigError(f"captions hold token id {bad} but vocab_size={vocab_size}; give ids from "
                          "0 to vocab_size - 1, encoded with the vocabulary the model was built for")


def check_decoding(*, max_len: int, beam_size: int = 1, length_penalty: float = 1.0) -> None:
    """Refuse settings that give no caption here, in one line, rather than deep inside a search."""
    if not is_count(beam_size):
        raise ConfigError(f"beam_size={beam_size!r}: must be >= 1, a whole number (1 decodes greedily)")
    if not is_count(max_len):
        raise ConfigError(f"max_len={max_len!r}: a caption needs at least one word; give a whole number >= 1")
    # NaN ranked the beams at random: another caption, and a NaN score
    if not (is_number(length_penalty) and math.isfinite(length_penalty)):
        raise ConfigError(f"length_penalty={length_penalty!r}: give a finite number (0 ranks captions by their "
                          "total log-probability, 1 by its mean per word)")


def _build_encoder(name: str, kwargs: dict[str, Any], pretrained: Union[bool, str, None],
                   img_size: Optional[int]) -> nn.Module:
    if img_size and built_for_one_size(name):  # built for the captioner's size
        given = kwargs.setdefault("img_size", img_size)
        if to_2tuple(given) != to_2tuple(img_size):
            raise ConfigError(f"img_size={img_size} but encoder_kwargs img_size={given}: give the size once, as img_size")
    if name.startswith("timm:"):
        import timm

        from ..pretrained import load_weights
        from ..recorded_preprocessing import weights_preprocessing

        check_timm_name(name[5:])
        encoder = timm.create_model(name[5:], num_classes=0, **kwargs)
        weights = name if pretrained is True else pretrained
        if weights:  # a file, or timm's own weights through the hub check that fails fast offline
            load_weights(encoder, weights, strict="attention")
        encoder.visattn_recorded_preprocessing = weights_preprocessing(None, weights)  # as create_model's
        return drop_pooled_head(encoder)
    return drop_pooled_head(create_model(name, pretrained=pretrained, num_classes=0, strict="attention", **kwargs))


class ShowAttendTell(nn.Module):
    """Image captioner with soft attention (Xu et al. 2015).

    Args:
        vocab_size: number of tokens, PAD/START/END/UNK included.
        encoder_name: registered CNN or ViT, or ``timm:NAME``; its ``forward_features`` is used.
        encoder_kwargs: builder arguments of the encoder (``img_size``, ``widths``, ...).
        encoder_pretrained: passed to ``create_model(..., pretrained=...)`` for the encoder (``None``: as
            ``encoder_name`` says, so ``ARCH.TAG`` loads those weights), with ``strict="attention"``: a plain
            ResNet's weights fit an attention ResNet of its depth.
        freeze_encoder: keep the encoder's weights fixed (and its norms in eval mode).
        img_size: input size (a ViT encoder is built for it); ``None`` takes the encoder's ``input_size``.
        grid_size: the feature map is average-pooled to this grid (the paper's 14x14 is VGG's stride-16 map
            at 224 px); a grid larger than the map only repeats its regions.
        embed_dim: word embedding size.
        hidden_dim: LSTM size.
        attn_dim: hidden size of the additive attention.
        dropout: dropout before the output layer.
        deep_output: predict from ``E y_{t-1} + L_h h_t + L_z z_t`` instead of from ``h_t`` alone.
    """

    vocab_layers = ("embed", "fc")  # the modules whose weights are per token id (word embedding, output layer)

    def __init__(
        self,
        *,
        vocab_size: int = 10000,
        encoder_name: str = "resnet50",
        encoder_kwargs: Optional[dict[str, Any]] = None,
        encoder_pretrained: Union[bool, str, None] = None,
        freeze_encoder: bool = False,
        img_size: Optional[int] = None,
        grid_size: GridSize = 14,
        embed_dim: int = 512,
        hidden_dim: int = 512,
        attn_dim: int = 512,
        dropout: float = 0.5,
        deep_output: bool = False,
    ) -> None:
        super().__init__()
        if not (is_count(vocab_size) and vocab_size > END_ID):
            raise ConfigError(f"vocab_size={vocab_size!r}: give a whole number above {END_ID} (a vocabulary holds "
                              "PAD, START, END and its words); build it from captions")
        if img_size is not None:  # 0 would be read as unset (224 px), other bad values would reach the transforms
            check_count("img_size", img_size)
        for name, width in (("embed_dim", embed_dim), ("hidden_dim", hidden_dim), ("attn_dim", attn_dim)):
            check_count(name, width)
        check_rate("dropout", dropout)
        self.vocab_size = vocab_size
        self.encoder = _build_encoder(encoder_name, dict(encoder_kwargs or {}), encoder_pretrained, img_size)
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:  # eval mode now: Lightning does not call train(), whose override keeps it there
            self.encoder.requires_grad_(False).eval()
        channels = getattr(self.encoder, "input_size", (3, 224, 224))[0]
        default_size = tuple(getattr(self.encoder, "input_size", (3, 224, 224))[1:])
        self.input_size = (channels, *(default_size if img_size is None else (img_size, img_size)))
        self.grid = to_2tuple(grid_size, "grid_size")  # 0 trained NaN losses to the end, a negative one a traceback
        self.pool = nn.AdaptiveAvgPool2d(self.grid)
        self.feature_dim = feature_dim = self.encoder.num_features

        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.attention = AdditiveAttention(feature_dim, hidden_dim, attn_dim=attn_dim)
        self.init_h = nn.Linear(feature_dim, hidden_dim)
        self.init_c = nn.Linear(feature_dim, hidden_dim)
        self.f_beta = nn.Linear(hidden_dim, feature_dim)
        self.lstm = SigmoidLSTMCell(embed_dim + feature_dim, hidden_dim)
        self.deep_output = deep_output
        if deep_output:
            self.out_h = nn.Linear(hidden_dim, embed_dim)
            self.out_z = nn.Linear(feature_dim, embed_dim)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim if deep_output else hidden_dim, vocab_size)

    def train(self, mode: bool = True) -> "ShowAttendTell":
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # frozen batch-norm statistics must not drift either
        return self

    # -- encoder ----------------------------------------------------------------------------

    def encode(self, images: Tensor) -> Tensor:
        """Region features ``(B, P, C)`` with ``P = grid_h * grid_w``: :meth:`feature_map` pooled to the grid."""
        return self.pool(self.feature_map(images)).flatten(2).transpose(1, 2)  # (B, P, C)

    def feature_map(self, images: Tensor) -> Tensor:
        """The encoder's map ``(B, C, h, w)`` before pooling (a ViT's patch tokens laid on their grid)."""
        x = self.encoder.forward_features(images)
        if x.ndim == 4 and getattr(self.encoder, "output_fmt", "NCHW") == "NHWC":  # timm's Swin, MambaOut
            x = x.permute(0, 3, 1, 2)
        if x.ndim == 3:  # ViT tokens (B, prefix + N, C): drop class/register tokens, lay out the patch grid
            x = x[:, getattr(self.encoder, "num_prefix_tokens", 0):]
            grid_h, grid_w = _token_grid(self.encoder, images.shape[-2:], x.shape[1])
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid_h, grid_w)  # (B, C, h, w)
        return x

    # -- decoder ----------------------------------------------------------------------------

    def init_state(self, features: Tensor) -> tuple[Tensor, Tensor]:
        mean = features.mean(dim=1)  # (B, C)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))

    def step(
        self, features: Tensor, projected: Tensor, words: Tensor, state: tuple[Tensor, Tensor],
        word_products: Optional[Tensor] = None, rows: Optional[Tensor] = None,
        gates_buffer: Optional[Tensor] = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        """One decoding step: logits ``(R, V)``, the new ``(h, c)`` and attention ``α`` ``(R, P)``.

        Args:
            features: ``(B, P, C)`` region features of ``B`` images.
            projected: ``self.attention.project_features(features)``.
            words: ``(R,)`` previous word ids; ``R = B * M`` rows, ``M`` hypotheses per image in
                image order (beam search), ``M = 1`` otherwise.
            state: LSTM ``(h, c)``, each ``(R, hidden_dim)``.
            word_products: ``self.word_products()``, to look up each word's share of the LSTM gates
                instead of multiplying its embedding every step (decoding).
            rows: ``(R',)`` the only rows that attend and advance (decoding: hypotheses that have not
                ended); the others keep their state and get logits 0 and attention 0.
            gates_buffer: :meth:`gates_buffer` for ``R`` rows, which the attention reuses every step.
        """
        h, c = state
        queries = h.unflatten(0, (features.shape[0], -1))  # (B, M, hidden_dim)
        context, alpha = (t.flatten(0, 1) for t in self.attention(features, queries, projected=projected, rows=rows,
                                                                                  gates_buffer=gates_buffer))
        if rows is not None:
            h, c, context, words = (t.index_select(0, rows) for t in (h, c, context, words))
        context = torch.sigmoid(_apply(self.f_beta, h)) * context  # gating scalar β per feature channel
        embedded = self.embed(words)  # (R, embed_dim)
        if word_products is None:
            h, c = self.lstm(torch.cat([embedded, context], dim=1), (h, c))
        else:
            context_weight = self.lstm.weight_ih[:, self.embed.embedding_dim:]
            products = linear(context, context_weight, add=word_products.index_select(0, words))
            h, c = self.lstm.advance(products, (h, c))
        out = embedded + _apply(self.out_h, h) + _apply(self.out_z, context) if self.deep_output else h
        logits = _apply(self.fc, self.drop(out))
        if rows is None:
            return logits, (h, c), alpha
        h, c = state[0].index_copy(0, rows, h), state[1].index_copy(0, rows, c)
        return logits.new_zeros(len(alpha), self.vocab_size).index_copy_(0, rows, logits), (h, c), alpha

    @staticmethod
    def gates_buffer(projected: Tensor, rows_per_image: int) -> Tensor:
        """Memory for the attention's ``(R, P, attn_dim)`` activation of up to ``rows_per_image`` rows
        per image of ``projected``, to reuse at every decoding step."""
        return projected.new_empty(rows_per_image * projected.numel())

    def word_products(self) -> Tensor:
        """Each word's share of the LSTM gates, ``W_ih[:, :E] E_w + b_ih + b_hh``, ``(V, 4 * hidden_dim)``."""
        embed_weight = self.lstm.weight_ih[:, :self.embed.embedding_dim]
        return torch.addmm(self.lstm.bias_ih + self.lstm.bias_hh, self.embed.weight, embed_weight.t())

    def _decoding_word_products(self, rows: int) -> Optional[Tensor]:
        """``word_products()`` when it costs no more than one step of ``rows`` hypotheses multiplying
        their embeddings (``V <= rows``); ``None`` otherwise (a large vocabulary decoded a few rows at a time)."""
        return self.word_products() if self.vocab_size <= rows else None

    def forward(self, images: Tensor, captions: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: logits ``(B, T, V)`` predicting ``captions[:, 1:]`` and alphas ``(B, T, P)``.

        Args:
            images: ``(B, 3, H, W)`` normalised images.
            captions: ``(B, L)`` token ids ``START ... END PAD ...``; ``T = L - 1``.
        """
        self._check_captions(captions, images)
        features = self.encode(images)
        if not len(features):  # LSTM state of no rows cannot be laid out per image
            return features.new_zeros(0, captions.shape[1] - 1, self.vocab_size), features.new_zeros(
                0, captions.shape[1] - 1, features.shape[1])
        projected = self.attention.project_features(features)
        state = self.init_state(features)
        logits, alphas = [], []
        for t in range(captions.shape[1] - 1):
            step_logits, state, alpha = self.step(features, projected, captions[:, t], state)
            logits.append(step_logits)
            alphas.append(alpha)
        return torch.stack(logits, dim=1), torch.stack(alphas, dim=1)

    def _check_captions(self, captions: Tensor, images: Tensor) -> None:
        if not isinstance(captions, Tensor) or captions.dtype not in (torch.long, torch.int):
            raise ConfigError(f"captions are {getattr(captions, 'dtype', type(captions).__name__)}; give token ids "
                              "(B, L) as a torch.long tensor")
        if captions.ndim != 2 or captions.shape[1] < 2:
            raise ConfigError(f"captions of shape {tuple(captions.shape)}: captions need START and at least one more "
                              "token; give (B, L) ids with L >= 2")
        if len(captions) != len(images):
            raise ConfigError(f"{len(captions)} captions for {len(images)} images; give one caption row per image")
        # Not while compiling: comparing the ids' values there breaks the graph three times. CaptioningTask checks its
        # batches on the host before they move, so a compiled run still meets the one line.
        if not torch.compiler.is_compiling():
            refuse_token_ids_past_the_vocab(captions, self.vocab_size)

    # -- decoding ---------------------------------------------------------------------------

    @torch.no_grad()
    def greedy_decode(self, images: Tensor, max_len: int = 20) -> DecodedCaptions:
        """Most likely word at each step, until END or ``max_len`` words."""
        return self._decode(self._greedy_decode, images, max_len=max_len)

    def _decode(self, search: Callable[..., DecodedCaptions], images: Tensor, **settings: Any) -> DecodedCaptions:
        check_decoding(**settings)
        if not len(images):
            return DecodedCaptions.empty(images.device)
        with eval_mode(self):  # in train mode dropout would pick words at random and batch norms would learn
            return search(images, **settings)

    def _greedy_decode(self, images: Tensor, max_len: int) -> DecodedCaptions:
        features = self.encode(images)
        projected = self.attention.project_features(features)
        state = self.init_state(features)
        batch = images.shape[0]
        words = features.new_full((batch,), START_ID, dtype=torch.long)
        tokens, alphas, log_probs = [], [], []
        finished = torch.zeros(batch, dtype=torch.bool, device=images.device)
        word_products, rows, gates_buffer = self._decoding_word_products(batch), None, self.gates_buffer(projected, 1)
        for _ in range(max_len):
            logits, state, alpha = self.step(features, projected, words, state, word_products, rows, gates_buffer)
            step_log_probs, words = _word_log_probs(logits).max(dim=-1)
            tokens.append(words.masked_fill(finished, PAD_ID))
            log_probs.append(step_log_probs.masked_fill(finished, 0.0))
            alphas.append(alpha.to(torch.promote_types(alpha.dtype, torch.float32)))  # float32 under autocast
            finished |= words == END_ID
            if finished.all():
                break
            rows = _unfinished_rows(finished)
        return self._collect(torch.stack(tokens, 1), torch.stack(alphas, 1), torch.stack(log_probs, 1).sum(1))

    @torch.no_grad()
    def beam_search(
        self, images: Tensor, beam_size: int = 5, max_len: int = 20, length_penalty: float = 1.0
    ) -> DecodedCaptions:
        """Beam search over the whole batch at once: ``B * beam_size`` hypotheses advance together.

        Finished hypotheses (ended by END) are frozen with their score and take no more LSTM steps;
        an image leaves the batch as soon as all its hypotheses are finished, so the batch costs what
        its captions' lengths cost, not ``max_len`` steps for every image. The best hypothesis per image is the one with
        the highest ``log p / length ** length_penalty`` (0 disables normalisation). Equal scores go to the lower
        hypothesis, then the lower word id, as greedy decoding's. A ``beam_size`` above the number of captions keeps
        them all: the search is then exhaustive.
        """
        return self._decode(self._beam_search, images, beam_size=beam_size, max_len=max_len,
                            length_penalty=length_penalty)

    def _beam_search(self, images: Tensor, beam_size: int, max_len: int, length_penalty: float) -> DecodedCaptions:
        batch, k = images.shape[0], beam_size
        # The K hypotheses of an image share its features: steps broadcast them, never copy them.
        features = self.encode(images)  # (B, P, C)
        projected = self.attention.project_features(features)
        # One hypothesis per image until the first step expands it; a beam wider than the vocabulary starts with
        # enough that the first step has K candidates, all but the first of probability 0.
        width = -(-k // self.vocab_size)
        state = tuple(s.repeat_interleave(width, dim=0) for s in self.init_state(features))
        words = features.new_full((batch * width,), START_ID, dtype=torch.long)
        # Scores (and maps, in the trail's read-out) in float32 whatever the features' dtype: CUDA autocast
        # gives (log-)softmax in float32.
        scores = features.new_zeros((batch, width), dtype=torch.float32)  # (b, width): width is 1 (or more), then K
        scores[:, 1:] = float("-inf")
        finished = scores.isneginf()  # a hypothesis of probability 0 is not searched further
        active = torch.arange(batch, device=images.device)  # images still decoding, in batch order
        trail = _BeamTrail()
        kept = None  # rows of the last step's hypotheses that the next step continues; None: all
        # A finished hypothesis has one continuation, PAD, which keeps its score.
        frozen = torch.full((self.vocab_size,), float("-inf"), device=images.device)
        frozen[PAD_ID] = 0.0
        word_products, gates_buffer = self._decoding_word_products(batch * k), self.gates_buffer(projected, k)
        rows = _unfinished_rows(finished)
        for _ in range(max_len):
            logits, state, alpha = self.step(features, projected, words, state, word_products, rows, gates_buffer)
            width = scores.shape[1]
            log_probs = _word_log_probs(logits).view(len(active), width, -1)  # (b, width, V)
            log_probs = torch.where(finished[..., None], frozen, log_probs)
            scores, flat = _top_k((scores[..., None] + log_probs).view(len(active), -1), k)  # (b, K)
            beam, words = flat // self.vocab_size, flat % self.vocab_size
            # (b*K,) rows of this step's input that survive, in their new order
            survivors = (beam + torch.arange(0, len(active) * width, width, device=images.device)[:, None]).view(-1)
            trail.add(words.view(-1), alpha.index_select(0, survivors),
                      survivors if kept is None else kept.index_select(0, survivors))
            # (b, K): the flags of the hypotheses continued, and those that chose END now
            finished = (finished.view(-1).index_select(0, survivors).view(len(active), k) | (words == END_ID)
                        | scores.isneginf())
            # LSTM (h, c), each (b*K, hidden_dim), follow their hypotheses; words (b*K,), the next step's input
            state, words = (state[0].index_select(0, survivors), state[1].index_select(0, survivors)), words.view(-1)
            complete = finished.all(dim=1)  # (b,)
            kept = None
            if complete.any():
                trail.end(active[complete], _beam_rows(complete.nonzero().squeeze(1), k), scores[complete])
                keep = (~complete).nonzero().squeeze(1)
                kept = _beam_rows(keep, k)
                active, scores, finished, features, projected = (
                    t.index_select(0, keep) for t in (active, scores, finished, features, projected))
                words, state = words.index_select(0, kept), (state[0].index_select(0, kept), state[1].index_select(0, kept))
                if not len(active):
                    break
            rows = _unfinished_rows(finished)
        if kept is None:  # the rows of the images still searching at max_len
            kept = _beam_rows(torch.arange(len(active), device=images.device), k)
        trail.end(active, kept, scores)
        return self._best_hypotheses(*trail.read(batch, k, regions=features.shape[1]), length_penalty)

    def _best_hypotheses(self, tokens: Tensor, alphas: Tensor, scores: Tensor, length_penalty: float) -> DecodedCaptions:
        """Pick each image's best beam by length-normalised score. tokens (B, K, T), alphas (B, K, T, P)."""
        lengths = (tokens != PAD_ID).sum(-1)  # (B, K) words, END included
        normalised = scores / lengths.clamp(min=1).float() ** length_penalty
        best = normalised.argmax(dim=-1)  # (B,)
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        return self._collect(tokens[rows, best], alphas[rows, best], normalised[rows, best])

    def _collect(self, tokens: Tensor, alphas: Tensor, scores: Tensor) -> DecodedCaptions:
        """Split ``(B, T)`` tokens and ``(B, T, P)`` alphas into per-image words and maps (END and PAD dropped)."""
        ended = tokens == END_ID
        # Words before the first END, or all non-PAD words when there is none; one sync for the batch.
        lengths = torch.where(ended.any(dim=1), ended.int().argmax(dim=1), (tokens != PAD_ID).sum(dim=1)).tolist()
        out_tokens, out_maps = [], []
        for ids, maps, n in zip(tokens, alphas, lengths):
            out_tokens.append(ids[:n])
            out_maps.append(maps[:n].reshape(n, *self.grid).clone())  # its own: a view kept every image's maps
        return DecodedCaptions(out_tokens, out_maps, scores, ended.any(dim=1))


def _token_grid(encoder: nn.Module, image_size: Sequence[int], tokens: int) -> tuple[int, int]:
    """The ``(h, w)`` grid of a ViT encoder's patch tokens for images of ``image_size``: the grid it was built for,
    or for one built with ``dynamic_img_size`` the input's (the built grid laid a 32x64 image's tokens out wrong)."""
    embed = getattr(encoder, "patch_embed", None)
    if embed is None:
        side = math.isqrt(tokens)
        return side, side
    if getattr(encoder, "dynamic_img_size", False):
        return patch_grid(embed, image_size)
    return tuple(embed.grid_size)


def _apply(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` for ``(R, in)`` rows, through oneDNN where it is faster (large fp32 CPU inference)."""
    return linear(x, layer.weight, layer.bias)


def _unfinished_rows(finished: Tensor) -> Optional[Tensor]:
    """Rows of hypotheses that have not ended, for ``step(rows=...)``; ``None`` when none has ended."""
    rows = (~finished.view(-1)).nonzero().squeeze(1)
    return None if len(rows) == finished.numel() else rows


def _top_k(candidates: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best of ``(b, N)`` candidate scores, best first, and their indices; equal scores lowest index first
    (the lower hypothesis, then the lower word id), as greedy decoding's ``max`` takes them. ``topk`` leaves that
    open (on CPU it took any of them), so a beam of one parted from greedy decoding on equal log-probabilities."""
    values, flat = candidates.topk(k, dim=-1)  # (b, K)
    last = values[:, -1:]  # each row's K-th score
    if ((candidates >= last).sum(-1) > k).any():  # equal scores compete for the last places: the first ones win
        above, tied = candidates > last, candidates == last
        keep = above | (tied & (tied.cumsum(-1) <= k - above.sum(-1, keepdim=True)))
        flat = keep.nonzero()[:, 1].view(-1, k)  # K per row, in index order
    flat = flat.sort(dim=-1).values  # index order, which the stable sort by score keeps among equal scores
    values, order = candidates.gather(-1, flat).sort(dim=-1, descending=True, stable=True)
    return values, flat.gather(-1, order)


def _beam_rows(images: Tensor, beams: int) -> Tensor:
    """The ``len(images) * beams`` hypothesis rows of the given positions in a ``(b, beams)`` layout."""
    return (images[:, None] * beams + torch.arange(beams, device=images.device)).view(-1)


class _BeamTrail:
    """Each step's words, attention maps and back-pointers. Hypotheses are read out once, at the end,
    by following the pointers back, instead of copying every hypothesis's words and maps at every
    step (O(steps^2) copies; 3% of a batched search of the shipped captioner, more with long captions)."""

    def __init__(self) -> None:
        self.words: list[Tensor] = []  # per step (rows,): the word each hypothesis took
        self.maps: list[Tensor] = []  # per step (rows, P): the attention that chose it
        self.parents: list[Tensor] = []  # per step (rows,): the hypothesis it extends, a row of the step before
        self.ends: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = {}  # step -> (images, rows, (n, K) scores)

    def add(self, words: Tensor, maps: Tensor, parents: Tensor) -> None:
        self.words.append(words)
        self.maps.append(maps)
        self.parents.append(parents)

    def end(self, images: Tensor, rows: Tensor, scores: Tensor) -> None:
        """``images`` leave the search with the hypotheses at ``rows`` of the last step."""
        self.ends.setdefault(len(self.words) - 1, []).append((images, rows, scores))

    def read(self, batch: int, beams: int, *, regions: int) -> tuple[Tensor, Tensor, Tensor]:
        """Tokens ``(B, K, T)`` (PAD after a hypothesis's END), float32 maps ``(B, K, T, P)`` and scores ``(B, K)``."""
        like = self.maps[0]
        steps = len(self.words)
        tokens = torch.full((steps, batch * beams), PAD_ID, dtype=torch.long, device=like.device)
        maps = like.new_zeros((steps, batch * beams, regions), dtype=torch.float32)
        scores = like.new_full((batch, beams), float("-inf"), dtype=torch.float32)
        rows = dest = tokens.new_zeros(0)  # hypotheses followed back so far: their rows, and where they go
        for t in reversed(range(steps)):
            for images, end_rows, end_scores in self.ends.get(t, []):
                rows, dest = torch.cat([rows, end_rows]), torch.cat([dest, _beam_rows(images, beams)])
                scores[images] = end_scores.float()
            tokens[t].index_copy_(0, dest, self.words[t].index_select(0, rows))
            maps[t].index_copy_(0, dest, self.maps[t].index_select(0, rows).float())
            rows = self.parents[t].index_select(0, rows)
        return (tokens.T.reshape(batch, beams, steps), maps.transpose(0, 1).reshape(batch, beams, steps, regions),
                scores)


def _create_sat(**kwargs: Any) -> ShowAttendTell:
    return ShowAttendTell(**kwargs)


@register_model
def sat_resnet50(**kwargs: Any) -> ShowAttendTell:
    """Show, Attend and Tell on a ResNet-50, 224 px, 7x7 grid: its stride-32 map. (The paper's VGG gave 14x14;
    pooling 7x7 up to 14x14 would only copy each region into four slots. Give img_size=448, grid_size=14 for 14x14.)"""
    return _create_sat(**{**dict(encoder_name="resnet50", grid_size=7), **kwargs})


@register_model
def sat_vit_small_patch16_224(**kwargs: Any) -> ShowAttendTell:
    """Show, Attend and Tell on ViT-S/16 patch tokens, 224 px, 14x14 grid."""
    return _create_sat(**{**dict(encoder_name="vit_small_patch16_224", grid_size=14, attn_dim=384), **kwargs})


@register_model
def sat_cbam_resnet_scenes(**kwargs: Any) -> ShowAttendTell:
    """A CPU-sized captioner for 64 px FashionScenes: two-stage CBAM-ResNet (stride 8), 8x8 grid."""
    encoder_name = kwargs.pop("encoder_name", "cbam_resnet20_cifar")
    # encoder_kwargs given add to this encoder's layout (drop_path_rate=0.1), not replace it
    layout = dict(layers=(1, 1), widths=(32, 64), small_input=False) if encoder_name == "cbam_resnet20_cifar" else {}
    encoder_kwargs = {**layout, **(kwargs.pop("encoder_kwargs", None) or {})}
    model_args = dict(
        encoder_name=encoder_name, encoder_kwargs=encoder_kwargs, img_size=64, grid_size=8,
        embed_dim=128, hidden_dim=256, attn_dim=128, dropout=0.3, deep_output=True,
    )
    return _create_sat(**{**model_args, **kwargs})
