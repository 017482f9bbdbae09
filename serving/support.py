"""Whether an answer's sentences say what the passages they cite say, which sentences of a passage say it,
and which sentences of the passages best answer a question when the model gives no answer.

A sentence's *support* (0-1) against the passages it cites is the weighted share of its content words
that the passages contain: numbers (and dates, which are numbers) weigh most, then names (capitalised
words), then other words; English stop words, Chinese function words, [n] markers, the sources' titles
and prompt words ("Sources", "资料") are not content. A number the sentence states and the passages do not
makes it unsupported outright: that is the error a reader cannot see. Where the embedder understands the
sentence's language, the best cosine similarity between the sentence and one sentence of the passages is
averaged in, so that a faithful paraphrase still counts. A sentence without any content word is not a
claim at all (a heading, a list of titles and markers): its support is 0.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

from core.protocols import Embedder, EmbedderUnavailable
from core.text import CHINESE_FUNCTION_WORDS, detect_language, english_stop_words, has_han
from core.types import SentenceGrounding

log = logging.getLogger(__name__)

_MARKERS = re.compile(r"[\[【]\s*\d{1,3}(?:\s*[,，、]\s*\d{1,3})*\s*[\]】]")
# A number as digits ("15", "1,000", "3.5", "2015"), a Latin word, or a run of Han characters.
_HAN_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(
    rf"(?P<num>\d+(?:[.,]\d+)*)|(?P<word>[^\W\d_{_HAN_CHARS}]+(?:['’][^\W\d_{_HAN_CHARS}]+)*)|(?P<han>[{_HAN_CHARS}]+)"
)
_HAN_ONLY = re.compile(rf"[{_HAN_CHARS}]+")
_CN_DIGITS = {
    "〇": 0,
    "零": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_CN_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10_000, "亿": 100_000_000}
_CN_NUMERAL = re.compile(f"[{''.join(_CN_DIGITS)}{''.join(_CN_UNITS)}]+")
# A measure word after a Chinese numeral ("四次", "十五天"): the token is still a number.
_CN_MEASURE = "次天年月日号个周岁名人位项条倍场届台家所元"
_EN_NUMBERS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17,
    "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
}  # fmt: skip
# Words the prompt and the chat put around sources: a sentence made of them and titles states nothing.
_FILLER_WORDS = frozenset(
    [
        "source", "sources", "answer", "answers", "passage", "passages", "document", "documents", "page",
        "pages", "reference", "references", "资料", "来源", "答案", "回答", "参考", "文档", "页", "第",
    ]
)  # fmt: skip
# Chinese words too common to say what a sentence is about (beyond the function words of core.text).
_ZH_EXTRA_STOP = frozenset(
    [
        "我", "你", "他", "她", "它", "们", "我们", "他们", "请", "可以", "需要", "应该", "会", "能",
        "要", "将", "并", "等", "及其", "该", "此", "所", "之后", "以及", "由", "中", "上", "下",
        "内", "后", "前",
    ]
)  # fmt: skip

NUMBER_WEIGHT = 3.0
NAME_WEIGHT = 2.0
WORD_WEIGHT = 1.0
# One Han character alone is a weaker cue than a word of two or more.
HAN_CHAR_WEIGHT = 0.5
# How much the embedder's cosine counts in the support where it understands the language.
COSINE_WEIGHT = 0.5

# Sentence ends: Chinese full stops anywhere, Latin ones before a space; line breaks always.
_SENTENCE_END = re.compile(r"[。！？!?]+[”’」』）)]*|\.+[”’\"')\]]*(?=\s|$)|\n")
_ABBREVIATION = re.compile(
    r"(?:\b(?:[A-Z]|Mr|Mrs|Ms|Dr|Prof|St|Mt|No|Nos|vs|etc|e\.g|i\.e|Inc|Ltd|Co|Jr|Sr|Fig|approx|ca)\.)$"
)


@dataclass(frozen=True)
class Span:
    """Part of a passage: `text == passage[start:end]`."""

    start: int
    end: int
    text: str


def passage_sentences(text: str, *, headings: Iterable[str] = ()) -> list[Span]:
    """The sentences of a passage with their character offsets, Chinese and English; lines that only
    repeat a heading (the section path chunks start with) are left out."""
    skip = {h.strip().casefold() for heading in headings for h in [heading, *heading.split(" > ")] if h.strip()}
    spans: list[Span] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end() if match.group() != "\n" else match.start()
        if match.group().startswith(".") and _ABBREVIATION.search(text[start : match.start() + 1]):
            continue
        spans.extend(_trimmed(text, start, end))
        start = match.end()
    spans.extend(_trimmed(text, start, len(text)))
    return [s for s in spans if s.text.casefold().strip(" :：#") not in skip and _WORDY.search(s.text)]


_WORDY = re.compile(r"\w")


def _trimmed(text: str, start: int, end: int) -> list[Span]:
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return []
    left = start + (len(piece) - len(piece.lstrip()))
    return [Span(left, left + len(stripped), stripped)]


def _stem(word: str) -> str:
    """A light English stemmer, applied alike to sentences and passages (plurals, -ing, -ed)."""
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    if len(w) > 4 and w.endswith(("ies", "ied")):
        return w[:-3] + "y"
    if len(w) > 5 and w.endswith("ing"):
        return w[:-3]
    if len(w) > 4 and w.endswith("ed"):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def _number_key(digits: str) -> str:
    """ "1,000" and "1000" are the same number; "3.50" and "3.5" too."""
    plain = digits.replace(",", "")
    if "." in plain:
        plain = plain.rstrip("0").rstrip(".")
    return "#" + plain.lstrip("0") if plain.strip("0") else "#0"


def chinese_number(text: str) -> int | None:
    """十五 → 15, 二十四 → 24, 三百 → 300, 两万 → 20000; None if it is not a plain Chinese numeral."""
    if not text or any(c not in _CN_DIGITS and c not in _CN_UNITS for c in text):
        return None
    total, section, digit = 0, 0, None
    for char in text:
        if char in _CN_DIGITS:
            digit = _CN_DIGITS[char] if digit is None else digit * 10 + _CN_DIGITS[char]
            continue
        unit = _CN_UNITS[char]
        if unit >= 10_000:
            total += (section + (digit or 0)) * unit
            section = 0
        else:
            section += (1 if digit is None else digit) * unit
        digit = None
    return total + section + (digit or 0)


@cache
def _jieba() -> object:
    import jieba

    jieba.initialize()
    return jieba


def _cut(run: str) -> list[str]:
    import jieba

    _jieba()
    return [t for t in jieba.lcut(run) if t.strip()]


@cache
def _stop() -> frozenset[str]:
    return frozenset(english_stop_words())


@dataclass(frozen=True)
class Terms:
    """A text's content terms and their weights; numbers are keyed "#15"."""

    weights: Mapping[str, float]

    @property
    def numbers(self) -> list[str]:
        return [t for t in self.weights if t.startswith("#")]

    @property
    def total(self) -> float:
        return sum(self.weights.values())


def content_terms(text: str, *, ignore: Iterable[str] = ()) -> Terms:
    """The content terms of one sentence or question (markers, the phrases in `ignore` and filler out)."""
    text = _MARKERS.sub(" ", text)
    for phrase in sorted((p for p in ignore if p.strip()), key=len, reverse=True):
        text = re.sub(re.escape(phrase.strip()), " ", text, flags=re.IGNORECASE)
    weights: dict[str, float] = {}

    def add(term: str, weight: float) -> None:
        weights[term] = max(weight, weights.get(term, 0.0))

    first_word = True
    for match in _TOKEN.finditer(text):
        if match.group("num"):
            add(_number_key(match.group("num")), NUMBER_WEIGHT)
        elif match.group("word"):
            word = match.group("word")
            lowered = word.lower()
            is_first, first_word = first_word, False
            if lowered in _EN_NUMBERS:
                add(f"#{_EN_NUMBERS[lowered]}", NUMBER_WEIGHT)
            elif lowered in _stop() or lowered in _FILLER_WORDS or len(lowered) < 2:
                continue
            else:
                name = (word[0].isupper() and not is_first) or (len(word) > 1 and word.isupper())
                add(_stem(word), NAME_WEIGHT if name else WORD_WEIGHT)
        else:
            first_word = False
            for token in _cut(match.group("han")):
                _add_han_token(token, add)
    return Terms(weights)


def _add_han_token(token: str, add: Callable[[str, float], None]) -> None:
    core = token[:-1] if len(token) > 1 and token[-1] in _CN_MEASURE else token
    number = chinese_number(core) if core != "一" else None
    if number is not None:
        add(f"#{number}", NUMBER_WEIGHT)
    elif token in CHINESE_FUNCTION_WORDS or token in _ZH_EXTRA_STOP or token in _FILLER_WORDS:
        return
    elif _HAN_ONLY.fullmatch(token):
        add(token, WORD_WEIGHT if len(token) > 1 else HAN_CHAR_WEIGHT)


@dataclass(frozen=True)
class Haystack:
    """What a passage (or one of its sentences) contains, for looking terms up."""

    words: frozenset[str]  # English stems and number keys
    flat: str  # lower-cased, without whitespace: Chinese terms are looked up as substrings, since jieba
    # cuts the same phrase differently in a short sentence and in a long passage

    @classmethod
    def of(cls, text: str) -> Haystack:
        words: set[str] = set()
        for match in _TOKEN.finditer(_MARKERS.sub(" ", text)):
            if match.group("num"):
                words.add(_number_key(match.group("num")))
            elif match.group("word"):
                lowered = match.group("word").lower()
                words.add(_stem(lowered))
                if lowered in _EN_NUMBERS or lowered == "one":
                    words.add(f"#{_EN_NUMBERS.get(lowered, 1)}")
            else:
                for numeral in _CN_NUMERAL.findall(match.group("han")):
                    number = chinese_number(numeral)
                    if number is not None:
                        words.add(f"#{number}")
        return cls(frozenset(words), re.sub(r"\s+", "", text.lower()))

    def has(self, term: str) -> bool:
        return term in self.flat if has_han(term) else term in self.words


def lexical_support(claim: Terms, haystack: Haystack, *, numbers_must_match: bool = True) -> float:
    """Weighted share of the claim's terms the haystack holds; 0 when a number of the claim is missing."""
    total = claim.total
    if total <= 0:
        return 0.0
    if numbers_must_match and any(not haystack.has(n) for n in claim.numbers):
        return 0.0
    return sum(w for t, w in claim.weights.items() if haystack.has(t)) / total


@dataclass(frozen=True)
class Passage:
    """One numbered source as the scorer reads it."""

    index: int
    text: str
    headings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Quote:
    """A sentence of a passage, chosen for an extractive answer or as evidence."""

    index: int  # the source's [n]
    span: Span
    score: float


@dataclass
class _Read:
    passage: Passage
    haystack: Haystack
    sentences: list[Span]
    sentence_haystacks: list[Haystack]


@dataclass
class Reading:
    """The passages of one answer, split and indexed once; vectors are computed on first need."""

    scorer: SupportScorer
    passages: dict[int, _Read]
    ignore: tuple[str, ...]
    _vectors: dict[str, list[float]] = field(default_factory=dict)
    _embedder_down: bool = False

    def understood(self, text: str) -> bool:
        """Whether the embedder's cosine counts for this text (and the embedder threshold applies)."""
        embedder = self.scorer.embedder
        return not self._embedder_down and embedder is not None and embedder.understands(detect_language(text))

    def _cosines(self, text: str, others: Sequence[str]) -> list[float] | None:
        embedder = self.scorer.embedder
        if embedder is None or not others or not self.understood(text):
            return None
        missing = [t for t in dict.fromkeys([text, *others]) if t not in self._vectors]
        if missing:
            try:
                self._vectors.update(zip(missing, embedder.embed(missing, "passage"), strict=True))
            except EmbedderUnavailable as exc:
                # A remote embedder that fails leaves the lexical measure (and its threshold) for this answer.
                log.warning("support scores without the embedder: %s", exc)
                self._embedder_down = True
                return None
        a = self._vectors[text]
        return [max(0.0, sum(x * y for x, y in zip(a, self._vectors[o], strict=True))) for o in others]

    def support(self, sentence: str, cited: Sequence[int]) -> float:
        """The support of one sentence by the passages it cites (0 for a sentence that is not a claim)."""
        reads = [self.passages[n] for n in cited if n in self.passages]
        claim = content_terms(sentence, ignore=self.ignore)
        if not reads or claim.total <= 0:
            return 0.0
        haystack = Haystack(
            frozenset().union(*(r.haystack.words for r in reads)), "\x00".join(r.haystack.flat for r in reads)
        )
        lexical = lexical_support(claim, haystack)
        if lexical == 0.0:
            return 0.0
        cosines = self._cosines(_MARKERS.sub("", sentence), [s.text for r in reads for s in r.sentences])
        if cosines is None:
            return lexical
        return (1 - COSINE_WEIGHT) * lexical + COSINE_WEIGHT * max(cosines)

    def ground(self, sentences: Sequence[SentenceGrounding]) -> list[SentenceGrounding]:
        out = []
        for s in sentences:
            support = round(self.support(s.text, s.citations), 4)
            scorer = self.scorer
            threshold = scorer.threshold if self.understood(s.text) else scorer.lexical_threshold
            out.append(
                s.model_copy(update={"support": support, "grounded": bool(s.citations) and support >= threshold})
            )
        return out

    def _ranked(self, wanted: Sequence[str], index: int, *, question: bool) -> list[Quote]:
        """The sentences of passage `index`, best first, by how well they support (or answer) `wanted`."""
        read = self.passages[index]
        if not read.sentences:
            return []
        scores = [0.0] * len(read.sentences)
        texts = [s.text for s in read.sentences]
        for text in wanted:
            terms = content_terms(text, ignore=self.ignore)
            if question:
                terms = self.scorer.weigh_by_rarity(
                    terms, [h for r in self.passages.values() for h in r.sentence_haystacks]
                )
            cosines = self._cosines(_MARKERS.sub("", text), texts)
            for i, hay in enumerate(read.sentence_haystacks):
                lexical = lexical_support(terms, hay, numbers_must_match=False)
                score = lexical if cosines is None else (1 - COSINE_WEIGHT) * lexical + COSINE_WEIGHT * cosines[i]
                scores[i] = max(scores[i], score)
        quotes = [Quote(index, span, score) for span, score in zip(read.sentences, scores, strict=True)]
        return sorted(quotes, key=lambda q: (-q.score, q.span.start))

    def evidence(self, index: int, claims: Sequence[str], question: str) -> list[Span]:
        """The one or two sentences of passage `index` that best support the claims that cite it (or,
        with no claim, best answer the question), in passage order."""
        if index not in self.passages:
            return []
        claims = [c for c in claims if content_terms(c, ignore=self.ignore).total > 0]
        ranked = self._ranked(claims or [question], index, question=not claims)
        if not ranked or ranked[0].score <= 0:
            return []
        best = [ranked[0]]
        if len(ranked) > 1 and ranked[1].score >= EVIDENCE_SECOND_SHARE * ranked[0].score:
            best.append(ranked[1])
        return sorted((q.span for q in best), key=lambda s: s.start)

    def extract(self, question: str, *, limit: int) -> list[Quote]:
        """The sentences of all passages that best answer the question: the best one, and up to `limit`
        in all that score at least EXTRACT_SHARE of it. A passage's rank adds a little (retrieval already
        judged the whole passage)."""
        quotes: list[Quote] = []
        for rank, index in enumerate(sorted(self.passages)):
            bonus = RANK_BONUS / (rank + 1)
            quotes += [Quote(q.index, q.span, q.score + bonus) for q in self._ranked([question], index, question=True)]
        quotes.sort(key=lambda q: -q.score)
        if not quotes:
            return []
        best = quotes[0].score
        return [q for q in quotes[:limit] if q.score >= EXTRACT_SHARE * best]


# A second evidence sentence is shown when it scores this share of the best one.
EVIDENCE_SECOND_SHARE = 0.75
# Extractive answers: sentences after the best need this share of its score; passage rank bonus.
EXTRACT_SHARE = 0.5
RANK_BONUS = 0.05


class SupportScorer:
    """Support scores with one embedder (None: lexical only) and the thresholds that make them verdicts.

    `threshold` applies where the embedder understands the sentence's language (lexical and cosine
    averaged), `lexical_threshold` elsewhere (e.g. Chinese with an English-only embedder)."""

    def __init__(self, embedder: Embedder | None, *, threshold: float, lexical_threshold: float) -> None:
        self.embedder = embedder
        self.threshold = threshold
        self.lexical_threshold = lexical_threshold
        _jieba()  # jieba loads its dictionary now, not on the first answer

    def read(self, passages: Sequence[Passage], *, ignore: Iterable[str] = ()) -> Reading:
        reads: dict[int, _Read] = {}
        for p in passages:
            sentences = passage_sentences(p.text, headings=p.headings)
            reads[p.index] = _Read(p, Haystack.of(p.text), sentences, [Haystack.of(s.text) for s in sentences])
        return Reading(self, reads, tuple(ignore))

    @staticmethod
    def weigh_by_rarity(terms: Terms, haystacks: Sequence[Haystack]) -> Terms:
        """A question's terms weighted by how few of the candidate sentences hold them: the article's
        name is in every sentence, the word that picks the answer's sentence is in few."""
        n = len(haystacks)
        if n == 0:
            return terms
        weights = {}
        for term, weight in terms.weights.items():
            df = sum(1 for h in haystacks if h.has(term))
            weights[term] = weight * math.log(1 + n / (1 + df))
        return Terms(weights)
