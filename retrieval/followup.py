"""Does a question need the conversation to be understood?

Rewriting a question with its history is only safe when the question leans on that history: a
self-contained question ("报销需要在多少天内提交？" after a leave question) rewritten by a model drifts back
to the old topic. A follow-up leans on the history in ways that can be seen in its words, in both
languages: a pronoun or demonstrative standing for something said before ("When did it end?",
"它的预算是多少？"), an opening that continues the previous turn ("And what about sick leave?",
"那病假呢？"), or no subject of its own ("How long?", "持续了多久？").

Rules, not a model: the decision must be cheap, the same on every path, and explainable in a log line; a
question wrongly judged dependent still costs little, since retrieval fuses the question as asked with
its rewrite (retrieval/condense.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from core.text import english_stop_words, has_han
from retrieval.relevance import terms

# context_gain: no marker of its own, but the previous question makes it far more findable (app/answers).
Reason = Literal["self_contained", "pronoun", "continuation", "no_subject", "context_gain"]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_EN_WORD_CASED = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
_EN_PRONOUNS = _words(
    "it its itself they them their theirs themselves he him his himself she her hers herself "
    "this these those former latter"
)
# "that" is a relative pronoun or a conjunction after a noun ("the form that HR needs"); after these words
# it stands for something said before ("what about that?", "is that paid?").
_EN_BEFORE_THAT = _words(
    "about of for with on in to is was are were does did do after before from by at like than "
    "and or but so than into under over"
)
_EN_OPENERS = ("and", "also", "but", "so", "then", "plus", "or")
_EN_OPENING_PHRASES = (
    "what about", "how about", "what if", "what else", "anything else", "same for", "same question",
    "tell me more", "more about", "more on", "and what", "why not", "how so",
)  # fmt: skip
_EN_CLOSERS = ("too", "as well", "instead", "then", "there", "either", "again")
_EN_BE = _words("is are was were be been being")
# "this season", "these days": time, not something said before.
_EN_TIME = _words("season year month week time morning evening afternoon quarter semester term days")
# Words that carry no subject: a question made of these and stop words only is about something said before.
_EN_GENERIC = _words(
    "long much many often old far soon else more exactly example examples mean means meant tell know explain "
    "details detail detailed say said elaborate why when where who whom whose which what how please thanks "
    "thank ok okay yes no sure really one ones people person time times year years day days number amount "
    "happen happened happens last lasted start started begin began end ended die died dead killed cost "
    "costs take took taken get got make made do done use used call called start found founded build built "
    "live lived go went come came become became lead led pay paid need needed"
)

_ZH_PRONOUNS = _words(
    "它 它们 它的 他 他们 他的 她 她们 她的 其 该 该项 此 这 这个 这些 这种 这项 这次 这里 这儿 这样 那个 那些 "
    "那种 那项 那次 那里 那儿 那样 当时 此事 上述 前者 后者 同样"
)
_ZH_OPENERS = ("那么", "那", "还有", "另外", "此外", "以及", "而且", "并且", "然后", "也")
_ZH_QUESTION_WORDS = tuple(_words("什么 怎么 怎样 多少 几 哪 谁 为什么 如何 吗 是否 多久 多长 多大"))
# jieba POS tags of words that never name a subject: numerals, measure words, particles, punctuation,
# prepositions, conjunctions, adverbs, locality words, pronouns, interjections, onomatopoeia. (Its noun
# and verb tags cannot tell a subject apart: 报销 and 预算 come out as verbs.)
_ZH_NO_SUBJECT_TAGS = ("m", "q", "u", "y", "x", "p", "c", "d", "f", "r", "e", "o", "t")
# Verbs and nouns that a question can hold without naming what it is about ("花了多少钱？", "持续了多久？").
_ZH_GENERIC = _words(
    "是 有 在 会 能 要 可以 需要 应该 做 进行 完成 发生 开始 结束 持续 成立 建立 建造 建成 出生 去世 死 死亡 花 花费 "
    "耗时 用 使用 叫 称为 位于 属于 举行 发现 发明 创立 创建 获得 得到 赢得 包括 出现 存在 达到 增加 减少 成为 变成 "
    "导致 造成 影响 去 来 到 给 拿 买 卖 付 支付 时候 时间 人 人们 钱 年 天 月 次 问题 情况 东西 事情 方面 地方 原因 "
    "结果 方式 办法 怎么办 多久 多长时间 具体 详细 一下 说 讲 介绍 解释"
)


@dataclass(frozen=True)
class Dependence:
    depends: bool
    reason: Reason


SELF_CONTAINED = Dependence(False, "self_contained")


def history_dependence(question: str) -> Dependence:
    """Whether `question` needs the conversation before it; Chinese rules for text with Han characters."""
    text = question.strip()
    if not text:
        return SELF_CONTAINED
    return _chinese(text) if has_han(text) else _english(text)


def key_terms(question: str) -> set[str]:
    """The question's own content terms: what a rewrite must keep (its pronouns and generic words it may
    replace)."""
    drop = _EN_PRONOUNS | _EN_GENERIC | _ZH_PRONOUNS | _ZH_GENERIC | {"that", *_EN_OPENERS, *_ZH_OPENERS}
    return {t for t in terms(question) if t not in drop}


def _english(text: str) -> Dependence:
    original = _EN_WORD_CASED.findall(text.replace("’", "'"))
    words = [w.lower() for w in original]
    if not words:
        return Dependence(True, "no_subject")
    joined = " ".join(words)
    if words[0] in _EN_OPENERS or any(joined.startswith(p + " ") or joined == p for p in _EN_OPENING_PHRASES):
        return Dependence(True, "continuation")
    closer = next((c for c in _EN_CLOSERS if joined.endswith(" " + c)), None)
    # "How many lineages are there?" asks whether something exists; "Who lives there?" points back.
    if closer and len(words) > 2 and not (closer == "there" and words[-2] in _EN_BE):
        return Dependence(True, "continuation")
    stop = set(english_stop_words())

    def subject(word: str) -> bool:
        return word not in stop and word not in _EN_GENERIC and not word.isdigit()

    for i, word in enumerate(words):
        after = words[i + 1] if i + 1 < len(words) else ""
        pointing = word in _EN_PRONOUNS and not (word in ("this", "these") and after in _EN_TIME)
        pointing = pointing or (word == "that" and (i in (0, len(words) - 1) or words[i - 1] in _EN_BEFORE_THAT))
        if not pointing:
            continue
        # A pronoun after a name or a noun phrase of the question's own points inside the question
        # ("How old was Peyton Manning when he played?").
        named = any(w[:1].isupper() for w in original[1:i]) or sum(subject(w) for w in words[:i]) >= 2
        if not named:
            return Dependence(True, "pronoun")
    if not any(subject(w) for w in words):
        return Dependence(True, "no_subject")
    return SELF_CONTAINED


def _chinese(text: str) -> Dependence:
    import jieba.posseg

    body = text.rstrip("？?。.！!… ")
    pairs = [(p.word, p.flag) for p in jieba.posseg.lcut(body) if p.word.strip()]

    def subject(word: str, flag: str) -> bool:
        return (flag == "eng" or not flag.startswith(_ZH_NO_SUBJECT_TAGS)) and word not in _ZH_GENERIC

    def name(flag: str) -> bool:
        return flag == "eng" or flag.startswith(("nr", "ns", "nt", "nz"))

    opener = next((o for o in _ZH_OPENERS if body.startswith(o)), None)
    # "还有哪位欧洲新教领袖曾在巴黎大学深造？" names its own subject; "还有哪些类别？" does not.
    few_subjects = sum(subject(w, f) for w, f in pairs) < 3
    if opener and not body.startswith(("那些", "那个", "那种", "还是")) and (opener in ("那", "那么") or few_subjects):
        return Dependence(True, "continuation")
    if body.endswith("呢") and not any(q in body for q in _ZH_QUESTION_WORDS):
        return Dependence(True, "continuation")
    for i, (word, _) in enumerate(pairs):
        if word not in _ZH_PRONOUNS:
            continue
        before = pairs[:i]
        # A pronoun after a name of the question's own points inside it ("特斯拉是如何资助他的工作的？").
        if not (any(name(f) for _, f in before) or sum(subject(w, f) for w, f in before) >= 2):
            return Dependence(True, "pronoun")
    subjects = [i for i, (w, f) in enumerate(pairs) if subject(w, f)]
    if not subjects:
        return Dependence(True, "no_subject")
    # A lone verb that opens the question is its topic ("还款需要多久？"); one after a modal or done
    # (了, 过, 着) is the predicate of something unnamed: "需要谁审批？" (whose approval?), "超过了怎么办？".
    (first, *rest) = subjects
    if not rest and pairs[first][1] == "v":
        done = first + 1 < len(pairs) and pairs[first + 1][0] in ("了", "过", "着")
        if first > 0 or done:
            return Dependence(True, "no_subject")
    return SELF_CONTAINED
