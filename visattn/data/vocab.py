"""Caption vocabulary: a tokenizer and the word <-> id mapping that captioning models use.

Tokenization is deliberately simple (see :func:`tokenize`): NFKC-normalise and case-fold the
text and keep the runs of letters and digits of any script (so punctuation disappears and
``"T-shirt"`` becomes ``["t", "shirt"]``; on ASCII text this is lower-casing and keeping the runs of
``a-z`` and ``0-9``). The same rule is used to build the vocabulary, to encode references and to
score generated captions, so they always agree.

Ids 0..3 are the special tokens ``<pad>``, ``<start>``, ``<end>`` and ``<unk>``; the words
follow. A vocabulary is saved with its weights as :meth:`Vocabulary.to_list` (the ``vocab``
field of the weights index) and restored with :meth:`Vocabulary.from_list`.
"""
from __future__ import annotations

import functools
import re
import reprlib
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from ..errors import ArgumentError, ConfigError, is_count, is_many

__all__ = ["END", "PAD", "SPECIAL_TOKENS", "START", "UNK", "Vocabulary", "has_word", "tokenize"]

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
# Scripts written without spaces between words: Han ideographs (and 々〆〇), kana, Thai, Lao, Myanmar, Khmer.
_UNSPACED = (
    "\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff"
)


def tokenize(text: str) -> list[str]:
    """NFKC-normalise and case-fold ``text`` and split it into words: runs of letters and digits
    of any script (with their combining marks); everything else separates words. On ASCII text
    this is exactly lower-casing and keeping the runs of ``[a-z0-9]``.

    Chinese, Japanese, Thai, Lao, Myanmar and Khmer put no spaces between words, and no rule of
    this kind can find their word boundaries, so each of their characters is one token (as in
    character-level Chinese captioning); text already split into words by a segmenter is split
    into characters too.
    """
    if not isinstance(text, str):  # else a TypeError from unicodedata.normalize
        raise ConfigError(f"text={reprlib.repr(text)}: give the caption as a str")
    return _word_pattern().findall(unicodedata.normalize("NFKC", text).casefold())


def has_word(text: str) -> bool:
    """``bool(tokenize(text))``, stopping at the first word: readers drop wordless captions with it, so that only
    the vocabulary splits a caption whole (splitting it for this check too was most of a caption file's setup)."""
    if not isinstance(text, str):
        raise ConfigError(f"text={reprlib.repr(text)}: give the caption as a str")
    return _word_pattern().search(unicodedata.normalize("NFKC", text).casefold()) is not None


@functools.cache  # built on first use: scanning the Unicode table costs ~50 ms
def _word_pattern() -> re.Pattern:
    # re has no \p{M}: combining marks (Devanagari vowel signs, Arabic harakat) are \W to it, yet
    # belong to their word. They all lie below U+20000 but for the variation selectors supplement.
    marks = [c for c in range(0x20000) if unicodedata.category(chr(c)).startswith("M")]
    tail = f"[{_char_ranges(marks)}\U000e0100-\U000e01ef\u200c\u200d]"  # + ZWNJ, ZWJ (Persian, Indic)
    letter = rf"(?![{_UNSPACED}])[^\W_]"
    return re.compile(rf"[{_UNSPACED}]{tail}*|{letter}(?:{letter}|{tail})*")


_UNSPACED_CHAR = re.compile(f"[{_UNSPACED}]")


def _require_token(word: str) -> None:
    """One line for a vocabulary word that :func:`tokenize` does not give as it is."""
    if not isinstance(word, str):  # else named as tokenize's text
        raise ConfigError(f"vocab: {word!r} is no word; give words as str, as tokenize gives them")
    if tokenize(word) != [word]:
        gives = f"gives {tokenize(word)}" if tokenize(word) else "gives no word"
        raise ConfigError(f"vocab: {word!r} is not a word captions are split into (visattn.data.vocab.tokenize, "
                          f"which NFKC-normalises and case-folds, {gives}); give words as tokenize gives them, or "
                          "build it with Vocabulary.build(captions)")


def _require_many(name: str, values: object, what: str) -> None:
    """One line unless ``values`` is a collection of strings and not a single string, which Python iterates letter by
    letter: ``Vocabulary("a dog")`` had held the words a, d, g and o."""
    if not is_many(values):
        raise ConfigError(f"{name}={reprlib.repr(values)}: give a list of {what}")


def _char_ranges(codes: Iterable[int]) -> str:
    """Ascending code points as the ``a-b`` ranges of a regex character class."""
    runs: list[list[int]] = []
    for c in codes:
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return "".join(f"{chr(a)}-{chr(b)}" for a, b in runs)


class Vocabulary:
    """Word <-> id mapping with the special tokens at ids 0 (pad), 1 (start), 2 (end), 3 (unknown).

    Args:
        tokens: the words, in id order from id 4 on, each one that :func:`tokenize` gives (captions
            are encoded through it: a word it never gives, such as ``"Dog"`` or ``"t-shirt"``, is never
            a caption's, so it is refused); repeats and special tokens are dropped.
    """

    def __init__(self, tokens: Sequence[str] = ()) -> None:
        _require_many("tokens", tokens, "words, e.g. ['dog', 'runs']")
        words = dict.fromkeys(t for t in tokens if t not in SPECIAL_TOKENS)  # an ordered set
        for word in words:
            _require_token(word)
        self._tokens = [*SPECIAL_TOKENS, *words]
        self._ids = {token: i for i, token in enumerate(self._tokens)}

    @classmethod
    def build(cls, captions: Iterable[str], *, min_count: int = 1) -> Vocabulary:
        """The words that occur at least ``min_count`` times in ``captions``, most frequent first
        (ties in alphabetical order, so the result does not depend on the caption order)."""
        _require_many("captions", captions, "captions, e.g. ['a dog runs']")
        return cls.from_counts(Counter(word for caption in captions for word in tokenize(caption)), min_count=min_count)

    @classmethod
    def from_counts(cls, counts: Counter, *, min_count: int = 1) -> Vocabulary:
        """:meth:`build` from the captions' word counts."""
        if not is_count(min_count):  # 1.5 had kept words seen twice; "2" was a TypeError
            raise ArgumentError("min_count", min_count, "give a whole number, 1 or more (words seen fewer times "
                                "become <unk>)")
        if not counts:  # not min_count's doing: lowering it would not help
            raise ConfigError("captions: none holds a word (runs of letters or digits); give captions with words")
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        if not kept:  # every caption would train as <unk>s, and the model could only say nothing
            raise ArgumentError("min_count", min_count, f"no word occurs {min_count} times or more in the "
                                f"{sum(counts.values())} words of the training captions; lower it, or give more captions")
        return cls(kept)

    @classmethod
    def from_list(cls, tokens: Sequence[str]) -> Vocabulary:
        """Inverse of :meth:`to_list`.

        Raises:
            ConfigError: the list does not start with the special tokens or repeats a token.
        """
        tokens = list(tokens)
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ConfigError(
                f"vocab: must start with {list(SPECIAL_TOKENS)}, got {tokens[:4]}; save it with to_list()"
            )
        if len(set(tokens)) != len(tokens):
            repeated = sorted(t for t, n in Counter(tokens).items() if n > 1)
            raise ConfigError(f"vocab: tokens {repeated[:5]} appear more than once; save it with to_list()")
        return cls(tokens[len(SPECIAL_TOKENS) :])

    def to_list(self) -> list[str]:
        """Every token in id order, special tokens first."""
        return list(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._tokens == other._tokens

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={len(self)})"

    @property
    def pad_id(self) -> int:
        return self._ids[PAD]

    @property
    def start_id(self) -> int:
        return self._ids[START]

    @property
    def end_id(self) -> int:
        return self._ids[END]

    @property
    def unk_id(self) -> int:
        return self._ids[UNK]

    def token_id(self, token: str) -> int:
        """The id of ``token``, or :attr:`unk_id` for a word not in the vocabulary."""
        return self._ids.get(token, self.unk_id)

    def encode(self, text: str, *, max_len: int | None = None) -> list[int]:
        """``[start] + word ids + [end]``; words not in the vocabulary become ``<unk>``.

        Args:
            text: a caption.
            max_len: total length limit, start and end included; words beyond it are dropped
                and the end token is kept, so a model still learns where captions stop.
        """
        ids = [self.token_id(word) for word in tokenize(text)]
        if max_len is not None:
            if max_len < 2:
                raise ConfigError(f"max_len={max_len}: must be >= 2 (room for <start> and <end>)")
            ids = ids[: max_len - 2]
        return [self.start_id, *ids, self.end_id]

    def words(self, ids: Iterable[int]) -> list[str]:
        """One word per id, aligned with ``ids`` (and so with per-token attention maps): ``<unk>`` for an
        unknown word, ``""`` for the other special tokens."""
        tokens = [self._token(i) for i in ids]
        return [token if token not in SPECIAL_TOKENS or token == UNK else "" for token in tokens]

    def decode(self, ids: Iterable[int]) -> str:
        """The text BLEU and CIDEr score: words of ``ids`` joined by spaces up to the first ``<end>``, ``<pad>`` and
        ``<start>`` dropped. A generated ``<unk>`` stays, a word no reference holds (dropped, it would make
        "a red <unk> bag" score as the reference "a red bag", BLEU-4 1.0)."""
        return " ".join(word for word in self._until_end(ids) if word not in (PAD, START))

    def caption_text(self, ids: Iterable[int]) -> str:
        """The caption people read: words of ``ids`` up to the first ``<end>``, an unknown word shown as
        ``<unk>`` (not left out: a caption of unknown words read as an empty one), and no space between two
        characters of a script written without spaces (Chinese, Japanese, Thai, ...; :func:`tokenize`
        splits them into characters)."""
        text = ""
        for word in self._until_end(ids):
            if word in (PAD, START):
                continue
            unspaced = text and _UNSPACED_CHAR.match(text[-1]) and _UNSPACED_CHAR.match(word[0])
            text += word if not text or unspaced else " " + word
        return text

    def _until_end(self, ids: Iterable[int]) -> Iterator[str]:
        for i in ids:
            if int(i) == self.end_id:
                return
            yield self._token(i)

    def _token(self, token_id: int) -> str:
        """The word of ``token_id``; one line for an id outside the vocabulary (a negative one read from its end)."""
        index = int(token_id)
        if not 0 <= index < len(self._tokens):
            raise ConfigError(f"token id {index} is outside this vocabulary's ids 0..{len(self._tokens) - 1}; "
                              "give ids the model of this vocabulary made")
        return self._tokens[index]
