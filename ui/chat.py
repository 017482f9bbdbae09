"""The employee chat (Gradio). It talks to the kb API over HTTP only."""

from __future__ import annotations

from typing import Any

import gradio as gr
import httpx
from fastapi import FastAPI


def _text(content: Any) -> str:
    # Gradio may hand back message content as a string or as a list of typed parts.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text(part) for part in content)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content)


def _source_line(c: dict[str, Any]) -> str:
    page = f", page {c['page']}" if c.get("page") else ""
    return f"**[{c['index']}] {c['title']}**{page} — `{c['doc_id']}`\n\n> {c['snippet']}"


def format_sources(answer: dict[str, Any]) -> str:
    cited = answer.get("citations", [])
    cited_ids = {c["chunk_id"] for c in cited}
    others = [s for s in answer.get("sources", []) if s["chunk_id"] not in cited_ids]
    parts: list[str] = []
    if answer.get("degraded"):
        parts.append(f"⚠️ {answer.get('message', 'degraded answer')}")
    uncited = [x["text"] for x in answer.get("sentences", []) if not x.get("grounded")]
    if uncited and not answer.get("refused"):
        parts.append("⚠️ Not backed by a cited source: " + " ".join(f"“{t}”" for t in uncited))
    if cited:
        parts.append("#### Cited sources\n\n" + "\n\n".join(_source_line(c) for c in cited))
    if others and not answer.get("degraded"):
        parts.append("#### Also consulted\n\n" + "\n\n".join(_source_line(s) for s in others))
    return "\n\n".join(parts) or "_No sources._"


def build_ui(api_url: str, timeout_s: float = 180.0) -> gr.Blocks:
    def respond(message: str, history: list[dict[str, Any]], api_key: str) -> tuple[str, list[dict[str, Any]], str]:
        if not message.strip():
            return "", history, ""
        if not api_key.strip():
            return message, history, "Enter your API key first (ask your administrator for one)."
        turns = [
            {"role": m["role"], "content": _text(m["content"])}
            for m in history
            if m.get("role") in ("user", "assistant")
        ]
        try:
            response = httpx.post(
                f"{api_url}/ask",
                json={"question": message, "history": turns[-6:]},
                headers={"Authorization": f"Bearer {api_key.strip()}"},
                timeout=timeout_s,
            )
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            reply, sources = f"The knowledge base could not be reached: {exc}", ""
        else:
            if response.status_code != 200:
                reply, sources = f"Error: {body.get('error', {}).get('message', response.text)}", ""
            else:
                reply, sources = body["answer"], format_sources(body)
        history = [*history, {"role": "user", "content": message}, {"role": "assistant", "content": reply}]
        return "", history, sources

    with gr.Blocks(title="kb") as demo:
        gr.Markdown("## kb: ask the company knowledge base")
        # The key stays in this browser tab and is sent with each question; the server keeps no copy.
        api_key = gr.Textbox(label="API key", type="password", elem_id="kb-key")
        chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="kb-chat")
        question = gr.Textbox(placeholder="Ask a question, e.g. How many days of annual leave do new employees get?",
                              show_label=False, elem_id="kb-question")  # fmt: skip
        sources = gr.Markdown(elem_id="kb-sources")
        question.submit(respond, [question, chatbot, api_key], [question, chatbot, sources])
    blocks: gr.Blocks = demo
    return blocks


def mount_ui(app: FastAPI, *, api_url: str, path: str = "/ui", max_file_size: int | None = None) -> FastAPI:
    """Mount the chat UI; Gradio refuses uploaded files over `max_file_size` bytes."""
    mounted: FastAPI = gr.mount_gradio_app(app, build_ui(api_url), path=path, max_file_size=max_file_size)
    return mounted
