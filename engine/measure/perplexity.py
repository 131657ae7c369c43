"""Perplexity over a token stream, scored the way llama.cpp's perplexity tool does.

The text is cut into chunks of `ctx` tokens; each chunk is evaluated on its own (with BOS in
front if the model adds one), and only the second half of each chunk is scored, so every scored
token has at least ctx/2 tokens of context.

Files of any size are read and tokenized in blocks (`perplexity_of_file`): memory stays at one
block of text and one chunk of tokens, and progress is known from the first block.
"""

from __future__ import annotations

import codecs
import math
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import RequestError

if TYPE_CHECKING:
    from ..runtime.base import Model

BLOCK_BYTES = 64 << 10  # ~16k tokens: progress every few seconds, little memory
# Blocks end after a lone newline between two non-space characters: byte-level BPE
# pre-tokenizers split there anyway (a longer whitespace run could be split differently at the
# end of a text), so tokenizing block by block gives the whole text's tokens. SentencePiece
# vocabularies may differ by a token at each boundary, one per 64 KiB of text.
_BLOCK_END = re.compile(r"(?<=\S)\n(?=\S)")


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float
    scored_tokens: int
    chunks: int
    ctx: int


def chunk_scores(logits: torch.Tensor, chunk: Sequence[int], first: int) -> torch.Tensor:
    """Negative log-likelihoods of chunk[first+1:] given logits at positions first..end-1."""
    logprobs = torch.log_softmax(logits[first:-1].float(), dim=-1)
    targets = torch.tensor(chunk[first + 1 :], dtype=torch.long)
    return -logprobs.gather(1, targets[:, None])[:, 0]


def perplexity(
    logits_fn: Callable[[list[int]], torch.Tensor],
    ids: Sequence[int],
    *,
    ctx: int = 512,
    bos_id: int | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """logits_fn(ids) -> [len(ids), vocab] logits; ids: the whole tokenized text."""
    if ctx < 16:
        raise RequestError(f"--ctx must be at least 16 tokens, got {ctx}")
    if len(ids) < 2 * 16:
        raise RequestError(f"the text is only {len(ids)} tokens; perplexity needs at least 32")
    ctx = min(ctx, len(ids))
    n_chunks = len(ids) // ctx
    first = ctx // 2
    nll_sum, count = 0.0, 0
    for c in range(n_chunks):
        chunk = list(ids[c * ctx : (c + 1) * ctx])
        if bos_id is not None:
            chunk[0] = bos_id
        nll = chunk_scores(logits_fn(chunk), chunk, first)
        nll_sum += float(nll.double().sum())
        count += nll.numel()
        if on_chunk is not None:
            on_chunk(c + 1, n_chunks)
    mean = nll_sum / count
    return PerplexityResult(perplexity=math.exp(mean), mean_nll=mean, scored_tokens=count, chunks=n_chunks, ctx=ctx)


def read_text_blocks(path: str | os.PathLike, block_bytes: int = BLOCK_BYTES,
                     on_bytes: Callable[[int], None] | None = None) -> Iterator[str]:
    """The file's UTF-8 text in pieces of about `block_bytes`, cut where tokenization allows
    (`_BLOCK_END`); `on_bytes(n)` after each read. Raises RequestError on text that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    carry = ""
    with open(path, "rb") as f:
        while True:
            raw = f.read(block_bytes)
            try:
                text = carry + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError:
                raise RequestError(f"{path}: not UTF-8 text") from None
            if on_bytes is not None and raw:
                on_bytes(len(raw))
            if not raw:
                if text:
                    yield text
                return
            cut = None
            for cut in _BLOCK_END.finditer(text):
                pass
            if cut is not None:
                yield text[: cut.start() + 1]
                carry = text[cut.start() + 1 :]
            elif len(text) > 4 * block_bytes:  # no line breaks at all: cut anyway, bounded memory
                yield text
                carry = ""
            else:
                carry = text


def check_text_file(path: str | os.PathLike) -> None:
    """Fail before a model loads on a file whose start is not UTF-8 text."""
    next(read_text_blocks(path, block_bytes=64 << 10), None)


def perplexity_stream(
    logits_fn: Callable[[list[int]], torch.Tensor],
    blocks: Iterable[Sequence[int]],
    *,
    ctx: int = 512,
    bos_id: int | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> PerplexityResult:
    """`perplexity` over token ids that arrive in blocks, holding at most one chunk of them
    (plus one block); `on_chunk(n_tokens)` after each chunk is scored."""
    if ctx < 16:
        raise RequestError(f"--ctx must be at least 16 tokens, got {ctx}")
    pending: list[int] = []
    nll_sum, count, chunks = 0.0, 0, 0

    def score(chunk: list[int]) -> None:
        nonlocal nll_sum, count, chunks
        if bos_id is not None:
            chunk[0] = bos_id
        nll = chunk_scores(logits_fn(chunk), chunk, len(chunk) // 2)
        nll_sum += float(nll.double().sum())
        count += nll.numel()
        chunks += 1
        if on_chunk is not None:
            on_chunk(len(chunk))

    for ids in blocks:
        pending.extend(ids)
        while len(pending) >= ctx:
            score(pending[:ctx])
            del pending[:ctx]
    if chunks == 0:  # a text shorter than ctx is one chunk of its own length, as `perplexity`
        if len(pending) < 2 * 16:
            raise RequestError(f"the text is only {len(pending)} tokens; perplexity needs at least 32")
        ctx = len(pending)
        score(pending)
    mean = nll_sum / count
    return PerplexityResult(perplexity=math.exp(mean), mean_nll=mean, scored_tokens=count, chunks=chunks, ctx=ctx)


def perplexity_of_file(
    model: Model,
    path: str | os.PathLike,
    *,
    ctx: int = 512,
    on_bytes: Callable[[int], None] | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> PerplexityResult:
    """Perplexity of `model` over a text file of any size, read and tokenized block by block.

    `on_bytes(n)`: progress as each chunk is scored, in bytes of the file (a block's bytes
    spread evenly over its tokens), so it moves from the first chunk on."""
    tok = model.tokenizer
    bos = tok.bos_id if tok.add_bos else None
    unscored: deque[list[int]] = deque()  # [tokens, bytes] of each block not yet fully scored

    def blocks() -> Iterator[list[int]]:
        for text in read_text_blocks(path, block_bytes):
            ids = tok.encode(text, add_special=False)
            unscored.append([len(ids), len(text.encode())])
            yield ids

    def scored(n_tokens: int) -> None:
        done = 0
        while unscored and (n_tokens or not unscored[0][0]):
            tokens, nbytes = unscored[0]
            take = min(tokens, n_tokens)
            share = nbytes if take == tokens else nbytes * take // tokens
            unscored[0] = [tokens - take, nbytes - share]
            done, n_tokens = done + share, n_tokens - take
            if unscored[0][0] == 0:
                done += unscored.popleft()[1]
        if on_bytes is not None and done:
            on_bytes(done)

    result = perplexity_stream(model.logits, blocks(), ctx=ctx, bos_id=bos, on_chunk=scored)
    if on_bytes is not None:  # the unscored tail (less than one chunk)
        on_bytes(sum(nbytes for _, nbytes in unscored))
    return result
