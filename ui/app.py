"""The kb web app (Gradio Blocks): sign in with an API key, then Chat, and by role Documents, Keys, Audit.

It talks to the kb API over HTTP only, with the signed-in user's key; it imports nothing of kb.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from fastapi import FastAPI

from ui import render
from ui.admin import build_admin
from ui.chat import build_chat
from ui.client import ApiError, KbClient, Unreachable
from ui.documents import build_documents
from ui.downloads import Tickets, download_route
from ui.i18n import language_of, t
from ui.session import Labels, Session, UiConfig, default_kb, kb_names

# Sessions waiting for their answer at once, per UI process. The API's own in-flight cap protects the model;
# this only has to be high enough that no session waits for another's whole answer.
DEFAULT_CONCURRENCY = 64

CSS = """
#kb-header { align-items: center; }
#kb-header h2 { margin: 0; white-space: nowrap; font-size: 1.35em; }
#kb-signin { max-width: 560px; margin: 48px auto; }
.kb-note { padding: 8px 12px; border-radius: 6px; margin: 4px 0; }
.kb-note-error { background: #fdecea; color: #8a1c12; border: 1px solid #f5c2bd; }
.kb-note-ok { background: #e8f5e9; color: #1b5e20; border: 1px solid #b9dfbb; }
.kb-note-info { background: #eef4fb; color: #163a5f; border: 1px solid #c8dbf0; }
.kb-badge { display: inline-block; padding: 2px 10px; border-radius: 999px; font-size: 0.85em; font-weight: 600; }
.kb-badge-refused { background: #fff4e5; color: #8a4b00; border: 1px solid #f3c98b; }
.kb-badge-degraded { background: #fdecea; color: #8a1c12; border: 1px solid #f5c2bd; }
.kb-badge-extractive { background: #e8f1fd; color: #174ea6; border: 1px solid #b6cff5; }
.kb-uncited { text-decoration: underline dotted #c77700; text-decoration-thickness: 2px; background: #fff8e1; }
.kb-uncited-mark { color: #c77700; }
.kb-legend { font-size: 0.85em; color: #6b5a2a; }
.kb-cursor { animation: kb-blink 1s steps(2, start) infinite; }
@keyframes kb-blink { to { visibility: hidden; } }
.kb-sources { margin-top: 8px; display: flex; flex-direction: column; gap: 8px; }
.kb-sources-title { font-weight: 600; font-size: 0.9em; opacity: 0.8; }
.kb-card { border: 1px solid #d6dbe1; border-radius: 8px; padding: 8px 12px; background: rgba(127,127,127,0.04); }
.kb-card-cited { border-left: 4px solid #2f6fde; }
.kb-card-num { font-weight: 700; color: #2f6fde; }
.kb-card-page, .kb-card-state { font-size: 0.8em; opacity: 0.75; margin-left: 6px; }
.kb-card-snippet { font-size: 0.9em; margin: 4px 0; }
.kb-card-snippet mark { background: #fff0a8; padding: 0 1px; }
.kb-card-snippet mark.kb-evidence { background: #c8f0c8; }
.kb-card-foot { font-size: 0.8em; display: flex; gap: 12px; align-items: center; }
.kb-job { border: 1px solid #d6dbe1; border-radius: 8px; padding: 10px 14px; }
.kb-job-title { font-weight: 600; margin-bottom: 6px; }
.kb-bar { height: 10px; background: #e9edf2; border-radius: 5px; overflow: hidden; margin-bottom: 8px; }
.kb-bar-fill { height: 100%; background: #2f6fde; transition: width 0.4s; }
.kb-job-done .kb-bar-fill { background: #2e7d32; }
.kb-job-failed .kb-bar-fill { background: #c62828; }
.kb-job-table, .kb-job-table tr, .kb-job-table th, .kb-job-table td {
  border: none !important; padding: 2px 16px 2px 0 !important;
}
.kb-job-table th { text-align: left; padding-right: 16px; font-weight: 500; opacity: 0.8; }
.kb-job-failures { margin-top: 8px; color: #8a1c12; }
"""


def _signed_out_message(exc: ApiError, lang: str) -> str:
    if isinstance(exc, Unreachable):
        return t(lang, "signin.unreachable", message=exc.message)
    if exc.status == 401:
        return t(lang, "signin.wrong_key")
    if exc.status == 403:
        return t(lang, "signin.forbidden", message=exc.message)
    return t(lang, "error.generic", message=exc.message)


def build_ui(api_url: str, *, tickets: Tickets | None = None, timeout_s: float = 180.0) -> gr.Blocks:
    config = UiConfig(
        api_url=api_url.rstrip("/"), tickets=tickets if tickets is not None else Tickets(), timeout_s=timeout_s
    )
    labels = Labels()
    with gr.Blocks(title="kb", analytics_enabled=False) as demo:
        # The key lives here, in server memory for this browser session only (gr.State is neither stored
        # nor logged, and is dropped when the tab closes); the key textbox is cleared on sign-in.
        session_state = gr.State(None)
        lang_state = gr.State("en")
        with gr.Row(elem_id="kb-header"):
            title = labels.add(
                gr.Markdown(f"## {t('en', 'app.title')}"), value=lambda lang: f"## {t(lang, 'app.title')}"
            )
            who = gr.Markdown("", elem_id="kb-who")
            # Labelled in both languages: it is how a reader of the other one finds their way.
            language = gr.Radio(
                [("English", "en"), ("中文", "zh")], value="en", label="Language / 语言", show_label=False,
                container=False, elem_id="kb-lang", scale=0, min_width=190,
            )  # fmt: skip
            sign_out = labels.add(
                gr.Button(t("en", "signout.button"), visible=False, elem_id="kb-signout", scale=0, size="sm"),
                value="signout.button",
            )  # fmt: skip
        del title
        with gr.Column(elem_id="kb-signin") as signin_box:
            labels.add(
                gr.Markdown(f"### {t('en', 'signin.title')}"), value=lambda lang: f"### {t(lang, 'signin.title')}"
            )
            key_box = labels.add(
                gr.Textbox(label=t("en", "signin.key"), type="password", placeholder=t("en", "signin.key_placeholder"),
                           elem_id="kb-key", autofocus=True),
                label="signin.key", placeholder="signin.key_placeholder",
            )  # fmt: skip
            sign_in = labels.add(
                gr.Button(t("en", "signin.button"), variant="primary", elem_id="kb-signin-button"),
                value="signin.button",
            )
            signin_message = gr.HTML("", elem_id="kb-signin-message")
            labels.add(gr.Markdown(t("en", "signin.note"), elem_id="kb-signin-note"), value="signin.note")
        with gr.Column(visible=False, elem_id="kb-main") as main_box, gr.Tabs(elem_id="kb-tabs") as tabs:
            with gr.Tab(t("en", "tab.chat"), id="chat", elem_id="kb-tab-chat") as chat_tab:
                labels.add(chat_tab, label="tab.chat")
                chat = build_chat(config, labels, session_state, lang_state)
            documents = build_documents(config, labels, session_state, lang_state)
            admin = build_admin(config, labels, session_state, lang_state)

        def who_text(session: Session | None, lang: str) -> str:
            if session is None:
                return ""
            return t(lang, "app.signed_in", name=render.esc(session.me.name), role=render.esc(session.me.role))

        def relabel(lang: str, session: Session | None) -> list[Any]:
            lang = lang if lang in ("en", "zh") else "en"
            return [lang, who_text(session, lang), *labels.updates(lang)]

        relabel_outputs = [lang_state, who, *labels.components]

        def detect(request: gr.Request) -> list[Any]:
            lang = language_of(request.headers.get("accept-language") if request else None)
            return [gr.update(value=lang), *relabel(lang, None)]

        demo.load(detect, None, [language, *relabel_outputs], api_visibility="private", show_progress="hidden")
        language.input(relabel, [language, session_state], relabel_outputs, api_visibility="private",
                       show_progress="hidden")  # fmt: skip

        signed_outputs = [
            session_state, key_box, signin_message, signin_box, main_box, sign_out, who, tabs,
            documents.tab, admin.keys_tab, admin.audit_tab, chat.kb, chat.no_kb, documents.kb,
            chat.chatbot, chat.conversation, chat.feedback_box,
        ]  # fmt: skip

        def signed_in_view(session: Session, lang: str) -> list[Any]:
            me = session.me
            names = kb_names(session)
            chosen = default_kb(session)
            no_kb = render.note(t(lang, "chat.no_kb"), "error") if not names else ""
            return [
                session, "", "", gr.update(visible=False), gr.update(visible=True), gr.update(visible=True),
                who_text(session, lang), gr.Tabs(selected="chat"),
                gr.update(visible=me.can_write_documents), gr.update(visible=me.can_manage_keys),
                gr.update(visible=me.can_read_audit),
                gr.update(choices=names, value=chosen), no_kb, gr.update(choices=names, value=chosen),
                *chat.reset(),
            ]  # fmt: skip

        def signed_out_view(message: str) -> list[Any]:
            return [
                None, "", message, gr.update(visible=True), gr.update(visible=False), gr.update(visible=False), "",
                gr.Tabs(selected="chat"), gr.update(visible=False), gr.update(visible=False), gr.update(visible=False),
                gr.update(choices=[], value=None), "", gr.update(choices=[], value=None), *chat.reset(),
            ]  # fmt: skip

        async def do_sign_in(key: str, lang: str) -> list[Any]:
            key = (key or "").strip()
            if not key:
                return signed_out_view(render.note(t(lang, "signin.empty"), "error"))
            try:
                me = await KbClient(config.api_url, key, timeout_s=30).me()
            except ApiError as exc:
                return signed_out_view(render.note(_signed_out_message(exc, lang), "error"))
            return signed_in_view(Session(key=key, me=me), lang)

        def do_sign_out(session: Session | None) -> list[Any]:
            if session is not None:
                config.tickets.forget_key(session.key)
            return signed_out_view("")

        private: dict[str, Any] = {"api_visibility": "private", "show_progress": "hidden"}
        sign_in.click(do_sign_in, [key_box, lang_state], signed_outputs, **private)
        key_box.submit(do_sign_in, [key_box, lang_state], signed_outputs, **private)
        sign_out.click(do_sign_out, [session_state], signed_outputs, **private)
    blocks: gr.Blocks = demo
    return blocks


def mount_ui(
    app: FastAPI,
    *,
    api_url: str,
    path: str = "/ui",
    max_file_size: int | None = None,
    concurrency_limit: int | None = DEFAULT_CONCURRENCY,
) -> FastAPI:
    """Mount the web app at `path` (and its download route at `path/files`); Gradio refuses uploaded files
    over `max_file_size` bytes."""
    tickets = Tickets()
    prefix = path.rstrip("/")
    # Registered before the mount, so that it answers before Gradio's catch-all sub-application does.
    app.add_route(f"{prefix}/files", download_route(api_url, tickets), methods=["GET"], include_in_schema=False)
    blocks = build_ui(api_url, tickets=tickets)
    blocks.queue(default_concurrency_limit=concurrency_limit)
    mounted: FastAPI = gr.mount_gradio_app(
        app, blocks, path=path or "/", max_file_size=max_file_size, css=CSS, footer_links=[], show_error=False,
        enable_monitoring=False, pwa=False, mcp_server=False, ssr_mode=False,
    )  # fmt: skip
    return mounted
