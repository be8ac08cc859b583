"""Which sentences of an example's evidence answer its question: split, rank, keep the best.

BioASQ puts up to 1,800 tokens of evidence before a one-line question, and a small student reads
64 to 512 of them. Cutting the evidence's end keeps whatever came first; selection keeps instead
the sentences most related to the question, ranked by BM25 (Robertson & Zaragoza 2009, through the
maintained `bm25s` library) over the example's own sentences, and gives them back in their
original order. Each example is ranked on its own, so its selection never depends on the other
questions of a split. Sentences repeated word for word (BioASQ's snippets often are) count once.
"""

from __future__ import annotations

import re

# A sentence ends at ., ! or ? followed by space and a capital, digit or bracket, or at a line break.
_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])|\s*\n\s*")
_SPACE = re.compile(r"\s+")


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` in order, stripped, each distinct one once (compared without case
    and with runs of spaces as one)."""
    seen: set[str] = set()
    sentences = []
    for part in _BOUNDARY.split(text):
        sentence = part.strip()
        key = _SPACE.sub(" ", sentence).lower()
        if sentence and key not in seen:
            seen.add(key)
            sentences.append(sentence)
    return sentences


def rank_sentences(question: str, sentences: list[str]) -> list[int]:
    """Indices of `sentences`, most related to `question` first (BM25 with English stop words;
    ties, such as sentences sharing no word with the question, keep their original order)."""
    if len(sentences) < 2:
        return list(range(len(sentences)))
    import bm25s

    corpus = bm25s.tokenize(sentences, stopwords="en", show_progress=False)
    query = bm25s.tokenize([question], stopwords="en", show_progress=False, return_ids=False)[0]
    shared = [word for word in query if word in corpus.vocab]
    if not shared:
        return list(range(len(sentences)))
    ranker = bm25s.BM25()
    ranker.index(corpus, show_progress=False)
    scores = ranker.get_scores(shared)
    return sorted(range(len(sentences)), key=lambda i: (-float(scores[i]), i))
