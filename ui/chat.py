"""The Chat tab: streamed answers with source cards, badges, feedback, multi-turn history."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from ui import render
from ui.client import ApiError, Unreachable
from ui.i18n import t
from ui.session import Labels, Session, UiConfig

# Seconds between two screen updates while an answer streams: a fast model sends tokens quicker than a
# browser needs to see them, and every update is a message to the browser.
_REFRESH_S = 0.08


@dataclass
class Conversation:
    """One browser session's conversation: the plain turns sent as history, and which chat message is which
    answer (for feedback)."""

    turns: list[dict[str, str]] = field(default_factory=list)
    answers: dict[int, str] = field(default_factory=dict)


@dataclass
class ChatTab:
    kb: gr.Dropdown
    no_kb: gr.HTML
    chatbot: gr.Chatbot
    question: gr.Textbox
    conversation: gr.State
    feedback_box: gr.Group

    def reset(self) -> list[Any]:
        """Values for [chatbot, conversation, feedback_box] of an empty conversation."""
        return [[], Conversation(), gr.update(visible=False)]


def api_error_text(exc: ApiError, lang: str) -> str:
    if isinstance(exc, Unreachable):
        return t(lang, "signin.unreachable", message=exc.message)
    if exc.status == 401:
        return t(lang, "signin.wrong_key")
    if exc.status == 429:
        return t(lang, "chat.rate_limited", message=exc.message)
    if exc.status == 503:
        return t(lang, "chat.busy", message=exc.message)
    return t(lang, "chat.error", message=exc.message)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text(part) for part in content)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content)


def build_chat(config: UiConfig, labels: Labels, session_state: gr.State, lang_state: gr.State) -> ChatTab:
    with gr.Row():
        kb = labels.add(gr.Dropdown(choices=[], label=t("en", "chat.kb"), elem_id="kb-kb", scale=1), label="chat.kb")
        new = labels.add(
            gr.Button(t("en", "chat.new"), elem_id="kb-new", scale=0, min_width=180, size="md"), value="chat.new"
        )
    no_kb = gr.HTML("", elem_id="kb-no-kb")
    chatbot = labels.add(
        gr.Chatbot(
            label=t("en", "chat.conversation"), height="70vh", min_height=420, elem_id="kb-chat", sanitize_html=True,
            render_markdown=True, latex_delimiters=[], allow_tags=False, feedback_options=("Like", "Dislike"),
            buttons=["copy"], layout="panel",
        ),
        label="chat.conversation",
    )  # fmt: skip
    with gr.Row(equal_height=True):
        question = labels.add(
            gr.Textbox(
                placeholder=t("en", "chat.placeholder"), show_label=False, elem_id="kb-question", scale=5, lines=1,
                max_lines=6, autofocus=True,
            ),
            placeholder="chat.placeholder",
        )  # fmt: skip
        send = labels.add(
            gr.Button(t("en", "chat.send"), variant="primary", elem_id="kb-send", scale=0), value="chat.send"
        )
    with gr.Group(visible=False, elem_id="kb-feedback") as feedback_box:
        feedback_prompt = gr.Markdown("", elem_id="kb-feedback-prompt")
        with gr.Row(equal_height=True):
            comment = labels.add(
                gr.Textbox(label=t("en", "feedback.comment"), elem_id="kb-feedback-comment", scale=5, lines=1),
                label="feedback.comment",
            )
            send_comment = labels.add(
                gr.Button(t("en", "feedback.send"), elem_id="kb-feedback-send", scale=0), value="feedback.send"
            )
        feedback_status = gr.HTML("", elem_id="kb-feedback-status")
    conversation = gr.State(Conversation())
    pending = gr.State(None)
    tab = ChatTab(kb=kb, no_kb=no_kb, chatbot=chatbot, question=question, conversation=conversation,
                  feedback_box=feedback_box)  # fmt: skip

    async def ask(  # noqa: PLR0917 - Gradio passes the inputs positionally
        text: str, chat: list[dict[str, Any]], conv: Conversation, session: Session | None, kb_name: str, lang: str
    ) -> AsyncIterator[list[Any]]:
        text = (text or "").strip()
        if not text:
            yield [gr.skip(), gr.skip(), gr.skip(), gr.skip()]
            return
        chat = [{"role": m["role"], "content": _text(m["content"])} for m in chat or []]
        chat.append({"role": "user", "content": render.esc(text)})
        if session is None:
            chat.append({"role": "assistant", "content": render.note(t(lang, "signout.expired"), "error")})
            yield ["", chat, conv, gr.update(visible=False)]
            return
        if not kb_name:
            chat.append({"role": "assistant", "content": render.note(t(lang, "chat.no_kb"), "error")})
            yield ["", chat, conv, gr.update(visible=False)]
            return
        history = conv.turns[-config.history_messages :] if config.history_messages else []
        chat.append({"role": "assistant", "content": render.streaming_html("")})
        yield ["", chat, conv, gr.update(visible=False)]
        streamed = ""
        citations: Mapping[str, Any] = {}
        done: Mapping[str, Any] | None = None
        failure = ""
        last = time.monotonic()
        try:
            async for name, data in config.client(session).ask_stream(text, kb=kb_name, history=history):
                if name == "token":
                    first = not streamed
                    streamed += str(data.get("text", ""))
                    # The first token shows at once; later ones at most every _REFRESH_S.
                    if first or time.monotonic() - last >= _REFRESH_S:
                        last = time.monotonic()
                        chat = [*chat[:-1], {"role": "assistant", "content": render.streaming_html(streamed)}]
                        yield [gr.skip(), chat, gr.skip(), gr.skip()]
                elif name == "citations":
                    citations = data
                elif name == "done":
                    done = data
                elif name == "error":
                    failure = t(lang, "chat.interrupted", message=str(data.get("message", "")))
        except ApiError as exc:
            failure = api_error_text(exc, lang)
        if done is None or failure:
            shown = render.esc(streamed) + "\n\n" if streamed else ""
            content = shown + render.note(failure or t(lang, "chat.interrupted", message="no answer"), "error")
            chat = [*chat[:-1], {"role": "assistant", "content": content}]
            yield [gr.skip(), chat, conv, gr.skip()]
            return
        answer = str(citations.get("answer", streamed))
        refused, degraded = bool(done.get("refused")), bool(done.get("degraded"))

        def link(source: Mapping[str, Any]) -> str:
            return f"files?t={config.tickets.issue(session.key, kb_name, str(source.get('doc_id', '')))}"

        content = render.assistant_message(
            answer=answer, sentences=citations.get("sentences") or [], sources=citations.get("sources") or [],
            cited=[int(c.get("index", 0)) for c in citations.get("citations") or []], question=text,
            refused=refused, degraded=degraded, message=str(done.get("message", "")), lang=lang, link=link,
            extractive=bool(citations.get("extractive") or done.get("extractive")),
        )  # fmt: skip
        chat = [*chat[:-1], {"role": "assistant", "content": content}]
        conv.turns.extend([{"role": "user", "content": text}, {"role": "assistant", "content": answer}])
        if done.get("answer_id"):
            conv.answers[len(chat) - 1] = str(done["answer_id"])
        yield [gr.skip(), chat, conv, gr.skip()]

    ask_inputs = [question, chatbot, conversation, session_state, kb, lang_state]
    ask_outputs = [question, chatbot, conversation, feedback_box]
    question.submit(ask, ask_inputs, ask_outputs, api_visibility="private", show_progress="hidden")
    send.click(ask, ask_inputs, ask_outputs, api_visibility="private", show_progress="hidden")

    def new_conversation() -> list[Any]:
        return [*tab.reset(), "", None]

    new.click(new_conversation, None, [chatbot, conversation, feedback_box, feedback_status, pending],
              api_visibility="private")  # fmt: skip
    kb.change(new_conversation, None, [chatbot, conversation, feedback_box, feedback_status, pending],
              api_visibility="private")  # fmt: skip

    async def rate(conv: Conversation, session: Session | None, lang: str, data: gr.LikeData) -> list[Any]:
        index = data.index if isinstance(data.index, int) else data.index[0]
        answer_id = conv.answers.get(index)
        if session is None or not answer_id or data.liked not in (True, False):
            return [gr.update(visible=False), "", "", None, ""]
        rating = "up" if data.liked else "down"
        shown = t(lang, "feedback.up" if data.liked else "feedback.down")
        try:
            await config.client(session).feedback(answer_id, rating)
        except ApiError as exc:
            status = render.note(t(lang, "feedback.failed", message=exc.message), "error")
            return [gr.update(visible=True), "", status, None, ""]
        prompt = t(lang, "feedback.prompt", rating=shown)
        return [gr.update(visible=True), prompt, render.note(t(lang, "feedback.thanks")), {"answer_id": answer_id,
                "rating": rating}, ""]  # fmt: skip

    feedback_outputs = [feedback_box, feedback_prompt, feedback_status, pending, comment]
    chatbot.like(rate, [conversation, session_state, lang_state], feedback_outputs, api_visibility="private")

    async def send_feedback_comment(
        text: str, rated: dict[str, str] | None, session: Session | None, lang: str
    ) -> list[Any]:
        if session is None or not rated or not (text or "").strip():
            return [gr.skip(), gr.skip()]
        try:
            await config.client(session).feedback(rated["answer_id"], rated["rating"], text.strip())
        except ApiError as exc:
            return [gr.skip(), render.note(t(lang, "feedback.failed", message=exc.message), "error")]
        return ["", render.note(t(lang, "feedback.thanks"), "ok")]

    comment_inputs = [comment, pending, session_state, lang_state]
    send_comment.click(send_feedback_comment, comment_inputs, [comment, feedback_status], api_visibility="private")
    comment.submit(send_feedback_comment, comment_inputs, [comment, feedback_status], api_visibility="private")
    return tab
