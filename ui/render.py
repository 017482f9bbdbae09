"""HTML for the web app: answers, source cards, badges, job progress.

Everything that comes from documents or from the model (titles, snippets, answers, file names, error
texts) is escaped here before it is put into Markdown or HTML: a document titled
`<img src=x onerror=alert(1)>` is shown as that text. The only markup in the output is the markup written
in this module.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ui.i18n import t

_LATIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]{2,}")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]+")
_STOP_WORDS = (
    "the and for are was were what when where which who whom why how does did doing have has had with from "
    "that this these those into onto about over under than then there their they them your you our can could "
    "should would will shall may might must not any all some many much more most each per its it's been being "
    "get gets got new old one two"
)
_STOP = frozenset(_STOP_WORDS.split())
# A CJK question's common function characters, which would highlight half of any Chinese snippet.
_CJK_STOP = frozenset("的了是在有和与及或吗呢吧啊什么多少几个哪怎么如何需要可以")


def esc(text: object) -> str:
    """Text for HTML, attribute values included."""
    return html.escape(str(text), quote=True)


def question_terms(question: str) -> list[str]:
    """The words of a question worth highlighting: Latin words of 3+ letters that are not stop words, and
    two-character pieces of Chinese runs (Chinese has no spaces; bigrams match its words well enough)."""
    terms = {w.lower() for w in _LATIN.findall(question) if w.lower() not in _STOP}
    for run in _CJK.findall(question):
        chars = [c for c in run if c not in _CJK_STOP]
        if len(chars) == 1:
            continue
        terms.update(run[i : i + 2] for i in range(len(run) - 1) if not set(run[i : i + 2]) & _CJK_STOP)
    return sorted(terms, key=lambda term: (-len(term), term))


def highlight(text: str, question: str) -> str:
    """`text` escaped, with the question's words wrapped in <mark>."""
    terms = question_terms(question)
    if not terms:
        return esc(text)
    # Every character any term covers (terms overlap: Chinese bigrams do), then one <mark> per run. Matched
    # on the raw text and escaped piece by piece: matching escaped text would find words inside entities
    # ("amp" in "&amp;") and break them.
    covered = [False] * len(text)
    # A Latin word matches at a word's start ("serve" in "serves", not in "observes").
    alternatives = [f"(?=({'(?<![A-Za-z0-9])' if term[0].isascii() else ''}{re.escape(term)}))" for term in terms]
    for match in re.finditer("|".join(alternatives), text, re.IGNORECASE):
        length = max(len(group) for group in match.groups() if group)
        covered[match.start() : match.start() + length] = [True] * length
    out: list[str] = []
    start = 0
    for at in range(1, len(text) + 1):
        if at == len(text) or covered[at] != covered[start]:
            piece = esc(text[start:at])
            out.append(f"<mark>{piece}</mark>" if covered[start] else piece)
            start = at
    return "".join(out)


def _flagged(text: str, label: str) -> str:
    # Per line: a span must not cross the line breaks Markdown turns into blocks.
    return "\n".join(
        f'<span class="kb-uncited" title="{esc(label)}">{esc(line)}</span><sup class="kb-uncited-mark">⚠</sup>'
        if line.strip()
        else line
        for line in text.split("\n")
    )


def answer_html(answer: str, sentences: Sequence[Mapping[str, Any]], lang: str) -> str:
    """The answer escaped, each sentence that is not grounded marked: one that cites no source, and one
    whose cited source does not support what it says (the API's support check). The sentences are found in
    the answer in order, so that its line breaks and lists survive."""
    out: list[str] = []
    pos = 0
    marked = False
    for sentence in sentences:
        text = str(sentence.get("text", ""))
        if not text or sentence.get("grounded"):
            continue
        at = answer.find(text, pos)
        if at < 0:
            continue
        label = t(lang, "chat.unsupported" if sentence.get("citations") else "chat.uncited")
        out.append(esc(answer[pos:at]))
        out.append(_flagged(text, label))
        pos = at + len(text)
        marked = True
    out.append(esc(answer[pos:]))
    body = "".join(out)
    if marked:
        legend = esc(t(lang, "chat.uncited_legend"))
        body += f'\n\n<span class="kb-legend"><sup class="kb-uncited-mark">⚠</sup> {legend}</span>'
    return body


def streaming_html(partial: str) -> str:
    return esc(partial) + ' <span class="kb-cursor">▍</span>'


def badges(*, refused: bool, degraded: bool, lang: str, extractive: bool = False) -> str:
    out = []
    if refused:
        out.append(f'<span class="kb-badge kb-badge-refused">{esc(t(lang, "chat.refused"))}</span>')
    if degraded:
        out.append(f'<span class="kb-badge kb-badge-degraded">{esc(t(lang, "chat.degraded"))}</span>')
    elif extractive and not refused:
        out.append(f'<span class="kb-badge kb-badge-extractive">{esc(t(lang, "chat.extractive"))}</span>')
    return " ".join(out)


_CONTEXT_CHARS = 160


def evidence_html(source: Mapping[str, Any], question: str) -> str | None:
    """The part of a cited passage that supports the answer: its evidence sentences marked, with up to
    _CONTEXT_CHARS of the passage on either side. None when the source carries no usable evidence (the
    card then shows the snippet). Offsets come from the API; ones that do not match the passage are
    ignored rather than trusted."""
    text = str(source.get("text") or "")
    spans: list[tuple[int, int]] = []
    for item in source.get("evidence") or []:
        if not isinstance(item, Mapping):
            continue
        start, end = item.get("start"), item.get("end")
        if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start < end <= len(text):
            continue
        if text[start:end] != item.get("text"):
            continue
        spans.append((start, end))
    if not spans:
        return None
    spans.sort()
    begin = max(0, spans[0][0] - _CONTEXT_CHARS)
    finish = min(len(text), spans[-1][1] + _CONTEXT_CHARS)
    out = ["…" if begin else ""]
    pos = begin
    for first, end in spans:
        start = max(first, pos)  # overlapping evidence: the rest of it, marked once
        if end <= start:
            continue
        out.append(highlight(text[pos:start], question))
        out.append(f'<mark class="kb-evidence">{esc(text[start:end])}</mark>')
        pos = end
    out.append(highlight(text[pos:finish], question))
    out.append("…" if finish < len(text) else "")
    return "".join(out)


def source_cards(
    sources: Sequence[Mapping[str, Any]],
    *,
    cited: Iterable[int],
    question: str,
    lang: str,
    link: Callable[[Mapping[str, Any]], str | None] = lambda _: None,
) -> str:
    """Numbered cards, cited sources first: title, page, the evidence of a cited source (or the snippet)
    with the question's words highlighted, and a download link where `link` gives one. One line of HTML,
    so that Markdown leaves it alone."""
    if not sources:
        return ""
    cited_set = set(cited)
    ordered = sorted(sources, key=lambda s: (int(s.get("index", 0)) not in cited_set, int(s.get("index", 0))))
    cards = []
    for source in ordered:
        index = int(source.get("index", 0))
        is_cited = index in cited_set
        page = source.get("page")
        where = f'<span class="kb-card-page">{esc(t(lang, "chat.page", page=page))}</span>' if page else ""
        state = t(lang, "chat.cited" if is_cited else "chat.consulted")
        href = link(source)
        download = (
            f'<a class="kb-download" href="{esc(href)}" rel="noreferrer noopener">⬇ {esc(t(lang, "chat.download"))}</a>'
            if href
            else ""
        )
        doc_id = esc(source.get("doc_id", ""))
        title = esc(source.get("title") or source.get("doc_id", ""))
        # A cited source shows the sentences that back the answer; the others their opening lines.
        evidence = evidence_html(source, question) if is_cited else None
        shown = evidence if evidence is not None else highlight(str(source.get("snippet", "")), question)
        cards.append(
            f'<div class="kb-card{" kb-card-cited" if is_cited else ""}" data-doc-id="{doc_id}">'
            f'<div class="kb-card-head"><span class="kb-card-num">[{index}]</span> '
            f'<strong class="kb-card-title">{title}</strong> '
            f'{where} <span class="kb-card-state">{esc(state)}</span></div>'
            f'<div class="kb-card-snippet">{shown}</div>'
            f'<div class="kb-card-foot"><code class="kb-card-doc">{doc_id}</code> {download}</div>'
            "</div>"
        )
    heading = f'<div class="kb-sources-title">{esc(t(lang, "chat.sources"))}</div>'
    return f'<div class="kb-sources">{heading}{"".join(cards)}</div>'


def assistant_message(
    *,
    answer: str,
    sentences: Sequence[Mapping[str, Any]],
    sources: Sequence[Mapping[str, Any]],
    cited: Iterable[int],
    question: str,
    refused: bool,
    degraded: bool,
    message: str,
    lang: str,
    extractive: bool = False,
    link: Callable[[Mapping[str, Any]], str | None] = lambda _: None,
) -> str:
    """A finished answer: badges, the text with ungrounded sentences marked, then its source cards. An
    extractive answer (quotes from the sources, also what a degraded answer is) is shown like any other."""
    parts = []
    head = badges(refused=refused, degraded=degraded, lang=lang, extractive=extractive)
    if head:
        parts.append(head)
    if degraded and not (extractive and answer.strip()):
        # No quotes either: the passages are the cards below.
        parts.append(esc(message or t(lang, "chat.degraded")))
    elif refused:
        parts.append(esc(answer))
    else:
        parts.append(answer_html(answer, sentences, lang))
    cards = source_cards(sources, cited=cited, question=question, lang=lang, link=link)
    if cards:
        parts.append(cards)
    return "\n\n".join(parts)


def note(text: str, kind: str = "info") -> str:
    """A short message (error, confirmation) as HTML."""
    return f'<div class="kb-note kb-note-{esc(kind)}">{esc(text)}</div>' if text else ""


_TERMINAL = frozenset({"done", "failed", "cancelled", "canceled", "error", "succeeded", "completed"})


def job_finished(job: Mapping[str, Any]) -> bool:
    return str(job.get("state", "")).lower() in _TERMINAL


def job_progress(job: Mapping[str, Any], lang: str) -> str:
    """An ingestion job's progress: state, stage, counts, a bar, and each failed file's error."""
    state = str(job.get("state", ""))
    files_total = int(job.get("files_total") or 0)
    files_done = int(job.get("files_done") or 0)
    files_failed = int(job.get("files_failed") or 0)
    pages_total = int(job.get("pages_total") or 0)
    pages_done = int(job.get("pages_done") or 0)
    fraction = (files_done + files_failed) / files_total if files_total else 0.0
    if job_finished(job):
        fraction = 1.0
    elif pages_total:
        fraction = max(fraction, min(pages_done / pages_total, 1.0) * 0.95)
    rows = [
        (t(lang, "docs.stage"), job.get("stage") or "—"),
        (t(lang, "docs.current_file"), job.get("current_file") or "—"),
        (
            t(lang, "docs.files_progress"),
            f"{files_done} / {files_total}" + (f" (✗ {files_failed})" if files_failed else ""),
        ),
        (t(lang, "docs.pages"), f"{pages_done} / {pages_total}" if pages_total else str(pages_done)),
        (t(lang, "docs.chunks"), str(job.get("chunks_done") or 0)),
    ]
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    failures = [
        item for item in job.get("items", []) or [] if item.get("error") or str(item.get("status", "")) == "failed"
    ]
    failed_html = ""
    if failures or job.get("error"):
        lines = "".join(_failure(item) for item in failures)
        if job.get("error"):
            lines = f"<li>{esc(job['error'])}</li>" + lines
        failed_html = (
            f'<div class="kb-job-failures"><strong>{esc(t(lang, "docs.failed_files"))}</strong><ul>{lines}</ul></div>'
        )
    css_state = re.sub(r"[^a-z]", "", state.lower()) or "queued"
    return (
        f'<div class="kb-job kb-job-{css_state}" data-state="{esc(state)}">'
        f'<div class="kb-job-title">{esc(t(lang, "docs.job", job_id=job.get("job_id", ""), state=state))}</div>'
        f'<div class="kb-bar"><div class="kb-bar-fill" style="width:{round(fraction * 100)}%"></div></div>'
        f'<table class="kb-job-table">{table}</table>{failed_html}</div>'
    )


def _failure(item: Mapping[str, Any]) -> str:
    name = esc(item.get("file") or item.get("doc_id") or "")
    error = esc(item.get("error") or item.get("status") or "")
    code = f" <code>{esc(item['error_code'])}</code>" if item.get("error_code") else ""
    return f"<li><strong>{name}</strong>: {error}{code}</li>"
