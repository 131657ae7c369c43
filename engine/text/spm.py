"""SentencePiece tokenizer for GGUF `llama` vocabularies, token-for-token equal to llama.cpp.

This is llama.cpp's `llm_tokenizer_spm` (src/llama-vocab.cpp), which is what we test against:

- special tokens split the text first, exactly as for BPE vocabularies (`engine.text.tokenizer`);
- each remaining fragment gets a leading space when `add_space_prefix` is set and it starts the
  text or follows a special token, then every " " becomes "▁";
- the fragment is split into characters, and the adjacent pair whose concatenation is the
  highest-scoring token is merged (the leftmost pair on ties) until no pair forms a token;
- a final symbol that is not a token becomes one `<0xXX>` byte token per UTF-8 byte.

The vocabulary's normalizer is not applied (llama.cpp does not either), and BOS/EOS are added
where the metadata asks (BOS by default, as llama.cpp does for `llama` vocabularies).

Speed: merges only ever join two symbols whose concatenation is a token, so the text can be cut
in front of a "▁" wherever the character before it is followed by "▁" in no token at all (in
most vocabularies, wherever a word ends); the pieces (words, mostly) are merged independently,
and each distinct one is merged once and remembered. This gives the same ids as merging the
whole fragment at once.
"""

from __future__ import annotations

import heapq
from numbers import Real
from typing import Any

from ..errors import ModelFormatError
from .vocab import GGUFVocabulary, _flag, _read_vocabulary, _special_id, _special_setup

SPACE = "▁"  # U+2581, SentencePiece's visible space
_MEMO_ENTRIES = 50_000  # merged pieces remembered (words, mostly) before the memo starts over
_MEMO_CHARS = 64  # longer pieces are merged every time


class SPMTokenizer(GGUFVocabulary):
    """A GGUF `llama` (SentencePiece) vocabulary. Build it with `from_gguf_metadata`."""

    unk_id: int | None

    def __init__(self, *, tokens: list[str], scores: list[float], attrs: list[int],
                 bos_id: int | None, eos_id: int | None, unk_id: int | None,
                 eos_ids: frozenset[int], add_bos: bool, add_eos: bool,
                 add_space_prefix: bool, rstrip_ids: frozenset[int] = frozenset()) -> None:
        self._init_vocabulary(tokens, attrs, _normal_bytes, bos_id=bos_id, eos_id=eos_id, eos_ids=eos_ids,
                              add_bos=add_bos, add_eos=add_eos, rstrip_ids=rstrip_ids)
        self.unk_id, self.add_space_prefix = unk_id, add_space_prefix
        self._scores = scores
        # The characters some token has right before a "▁": the only ones a merge can join to
        # the "▁" that follows them. Any token counts, whatever its type, as in llama.cpp.
        self._before_space = set()
        for text in tokens:
            k = text.find(SPACE, 1)
            while k > 0:
                self._before_space.add(text[k - 1])
                k = text.find(SPACE, k + 1)
        self._byte_ids = [self._byte_token(b) for b in range(256)]
        self._memo: dict[str, tuple[int, ...]] = {}

    def _byte_token(self, b: int) -> int | None:
        """llama.cpp's byte_to_token: "<0xAB>", else the byte itself as a one-character token."""
        found = self._text_to_id.get(f"<0x{b:02X}>")
        if found is None and b < 0x80:
            found = self._text_to_id.get(chr(b))
        return found

    # --- construction --------------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any]) -> SPMTokenizer:
        """Build from GGUF metadata (key -> value, arrays as lists), validating what it reads."""
        tokens, attrs = _read_vocabulary(metadata, "llama", "SPMTokenizer")
        n = len(tokens)
        scores = metadata.get("tokenizer.ggml.scores")
        if scores is None:
            scores = [0.0] * n
        elif not isinstance(scores, list) or len(scores) < n or not all(
                type(s) is float or isinstance(s, Real) and not isinstance(s, bool)
                for s in scores[:n]):
            raise ModelFormatError("tokenizer.ggml.scores must be a list of numbers, one per token")
        scores = [float(s) for s in scores[:n]]

        # llama.cpp's defaults for SentencePiece vocabularies: <unk>=0, <s>=1, </s>=2, BOS added.
        specials = _special_setup(metadata, tokens, attrs, bos_default=1, eos_default=2, add_bos_default=True)
        return cls(tokens=tokens, scores=scores, attrs=attrs,
                   unk_id=_special_id(metadata, "tokenizer.ggml.unknown_token_id", 0, n),
                   add_space_prefix=_flag(metadata, "tokenizer.ggml.add_space_prefix", True), **specials)

    # --- encoding ------------------------------------------------------------------------

    def _encode_text(self, text: str, after_special: bool, ids: list[int]) -> None:
        if self.add_space_prefix and after_special:
            text = " " + text
        self._encode_fragment(text.replace(" ", SPACE), ids)

    def _encode_fragment(self, text: str, ids: list[int]) -> None:
        memo, before_space = self._memo, self._before_space
        start, cut = 0, text.find(SPACE, 1)
        while start < len(text):
            if cut > 0 and text[cut - 1] in before_space:  # no cut: a token may span it
                cut = text.find(SPACE, cut + 1)
                continue
            end = cut if cut > 0 else len(text)
            piece = text[start:end]
            start, cut = end, text.find(SPACE, end + 1)
            piece_ids = memo.get(piece)
            if piece_ids is None:
                piece_ids = self._merge(piece)
                if len(piece) <= _MEMO_CHARS:
                    if len(memo) >= _MEMO_ENTRIES:
                        memo.clear()
                    memo[piece] = piece_ids
            ids.extend(piece_ids)

    def _merge(self, text: str) -> tuple[int, ...]:
        """llm_tokenizer_spm_session::tokenize on one piece: symbol i starts at character i
        and spans `length[i]` characters (0 once merged into its left neighbour)."""
        n = len(text)
        to_id, scores = self._text_to_id, self._scores
        length = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        # Bigrams as (-score, left, right, size in characters): the heap's smallest is llama.cpp's
        # best, the highest score and then the leftmost.
        heap = []
        for i in range(n - 1):
            token = to_id.get(text[i:i + 2])
            if token is not None:
                heap.append((-scores[token], i, i + 1, 2))
        heapq.heapify(heap)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            # Skip a bigram one of whose symbols has changed since it was queued.
            if length[left] == 0 or length[right] == 0 or length[left] + length[right] != size:
                continue
            length[left] = size
            length[right] = 0
            after = nxt[left] = nxt[right]
            if after >= 0:
                prev[after] = left
            before = prev[left]
            if before >= 0:
                token = to_id.get(text[before:left + size])
                if token is not None:
                    heapq.heappush(heap, (-scores[token], before, left, left + size - before))
            if after >= 0:
                token = to_id.get(text[left:after + length[after]])
                if token is not None:
                    heapq.heappush(heap, (-scores[token], left, after, size + length[after]))

        # llama.cpp's resegment: a merged symbol is always a token; a single character that is
        # not one becomes byte tokens (its reverse-merge table only matters for invalid UTF-8,
        # which a Python str cannot hold).
        out: list[int] = []
        i = 0
        while i >= 0:
            symbol = text[i:i + length[i]]
            token = to_id.get(symbol)
            if token is not None:
                out.append(token)
            else:
                out.extend(self._byte_fallback(symbol))
            i = nxt[i]
        return tuple(out)

    def _byte_fallback(self, char: str) -> list[int]:
        byte_ids = [self._byte_ids[b] for b in char.encode("utf-8", "surrogatepass")]
        if None not in byte_ids:
            return byte_ids
        # llama.cpp aborts here (the vocabulary has no token for one of the bytes); like
        # SentencePiece without byte fallback we emit one unknown token for the character.
        return [] if self.unk_id is None else [self.unk_id]


def _normal_bytes(text: str) -> bytes:
    """A NORMAL SentencePiece token's bytes: its visible spaces are spaces."""
    return text.replace(SPACE, " ").encode("utf-8")
