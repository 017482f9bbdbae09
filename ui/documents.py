"""The Documents tab (editors and admins): upload with live progress, a paged searchable table, and per
document: delete, replace with a new version, groups and tags, versions and rollback, download."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ui import render
from ui.chat import api_error_text
from ui.client import ApiError
from ui.i18n import t
from ui.session import Labels, Session, UiConfig, split_list

DOC_COLUMNS = ["doc_id", "title", "version", "status", "pages", "chunks", "groups", "tags", "updated_at"]
VERSION_COLUMNS = ["version", "status", "pages", "chunks", "sha256", "error", "created_at", "published_at"]
# How often a running job is asked for its progress, and for how long at most.
_POLL_S = 1.0
_POLL_LIMIT_S = 4 * 3600


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def document_rows(items: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [[_cell(item.get(column)) for column in DOC_COLUMNS] for item in items]


def version_rows(items: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for item in items:
        row = [_cell(item.get(column)) for column in VERSION_COLUMNS]
        row[4] = row[4][:12]  # the sha256's start tells versions apart
        rows.append(row)
    return rows


def _remove_uploads(paths: list[Path]) -> None:
    # Gradio keeps uploads in its cache folder: once they are with the API, this copy has no use.
    for path in paths:
        path.unlink(missing_ok=True)


@dataclass
class DocumentsTab:
    tab: gr.Tab
    kb: gr.Dropdown
    table: gr.Dataframe
    refresh_inputs: list[Any]
    refresh_outputs: list[Any]


def build_documents(config: UiConfig, labels: Labels, session_state: gr.State, lang_state: gr.State) -> DocumentsTab:
    with gr.Tab(t("en", "tab.documents"), id="documents", visible=False, elem_id="kb-tab-documents") as tab:
        labels.add(tab, label="tab.documents")
        kb = labels.add(gr.Dropdown(choices=[], label=t("en", "chat.kb"), elem_id="kb-docs-kb"), label="chat.kb")
        with gr.Accordion(t("en", "docs.upload"), open=True, elem_id="kb-upload-box") as upload_box:
            labels.add(upload_box, label="docs.upload")
            files = labels.add(
                gr.File(label=t("en", "docs.files"), file_count="multiple", type="filepath", elem_id="kb-upload-files"),
                label="docs.files",
            )
            with gr.Row():
                groups = labels.add(gr.Textbox(label=t("en", "docs.groups"), elem_id="kb-upload-groups"),
                                    label="docs.groups")  # fmt: skip
                tags = labels.add(gr.Textbox(label=t("en", "docs.tags"), elem_id="kb-upload-tags"), label="docs.tags")
            upload = labels.add(
                gr.Button(t("en", "docs.upload_button"), variant="primary", elem_id="kb-upload"),
                value="docs.upload_button",
            )
            progress = gr.HTML("", elem_id="kb-job")
        list_title = labels.add(
            gr.Markdown(f"### {t('en', 'docs.list')}"), value=lambda lang: f"### {t(lang, 'docs.list')}"
        )
        del list_title
        with gr.Row(equal_height=True):
            search = labels.add(gr.Textbox(label=t("en", "docs.search"), elem_id="kb-docs-search", scale=4),
                                label="docs.search")  # fmt: skip
            refresh = labels.add(gr.Button(t("en", "docs.refresh"), elem_id="kb-docs-refresh", scale=0),
                                 value="docs.refresh")  # fmt: skip
        table = gr.Dataframe(
            headers=DOC_COLUMNS, datatype="str", interactive=False, elem_id="kb-docs-table", wrap=True,
            column_count=len(DOC_COLUMNS),
        )  # fmt: skip
        with gr.Row(equal_height=True):
            prev = labels.add(gr.Button(t("en", "docs.prev"), elem_id="kb-docs-prev", size="sm"), value="docs.prev")
            page_info = gr.Markdown("", elem_id="kb-docs-page")
            nxt = labels.add(gr.Button(t("en", "docs.next"), elem_id="kb-docs-next", size="sm"), value="docs.next")
        offset = gr.State(0)
        status = gr.HTML("", elem_id="kb-docs-status")
        with gr.Group():
            selected = labels.add(
                gr.Textbox(label=t("en", "docs.selected"), elem_id="kb-doc-id", interactive=True), label="docs.selected"
            )
            download = gr.HTML("", elem_id="kb-doc-download")
            with gr.Row(equal_height=True):
                edit_groups = labels.add(gr.Textbox(label=t("en", "docs.groups"), elem_id="kb-doc-groups"),
                                         label="docs.groups")  # fmt: skip
                edit_tags = labels.add(gr.Textbox(label=t("en", "docs.tags"), elem_id="kb-doc-tags"), label="docs.tags")
                save_acl = labels.add(gr.Button(t("en", "docs.save_acl"), elem_id="kb-doc-save", scale=0),
                                      value="docs.save_acl")  # fmt: skip
            with gr.Row(equal_height=True):
                replacement = labels.add(
                    gr.File(label=t("en", "docs.replace_file"), file_count="single", type="filepath",
                            elem_id="kb-doc-replace-file", height=120),
                    label="docs.replace_file",
                )  # fmt: skip
                replace = labels.add(gr.Button(t("en", "docs.replace"), elem_id="kb-doc-replace", scale=0),
                                     value="docs.replace")  # fmt: skip
            with gr.Row(equal_height=True):
                confirm = labels.add(gr.Checkbox(label=t("en", "docs.confirm_delete"), elem_id="kb-doc-confirm"),
                                     label="docs.confirm_delete")  # fmt: skip
                delete = labels.add(gr.Button(t("en", "docs.delete"), variant="stop", elem_id="kb-doc-delete", scale=0),
                                    value="docs.delete")  # fmt: skip
            with gr.Accordion(t("en", "docs.versions"), open=False, elem_id="kb-doc-versions-box") as versions_box:
                labels.add(versions_box, label="docs.versions")
                show_versions = labels.add(gr.Button(t("en", "docs.show_versions"), elem_id="kb-doc-show-versions"),
                                           value="docs.show_versions")  # fmt: skip
                versions = gr.Dataframe(headers=VERSION_COLUMNS, datatype="str", interactive=False,
                                        elem_id="kb-doc-versions", column_count=len(VERSION_COLUMNS))  # fmt: skip
                with gr.Row(equal_height=True):
                    version = labels.add(gr.Number(label=t("en", "docs.version"), precision=0, minimum=1,
                                                   elem_id="kb-doc-version"), label="docs.version")  # fmt: skip
                    restore = labels.add(gr.Button(t("en", "docs.restore"), elem_id="kb-doc-restore", scale=0),
                                         value="docs.restore")  # fmt: skip

    async def list_documents(kb_name: str, query: str, start: int, session: Session | None, lang: str) -> list[Any]:
        if session is None or not kb_name:
            return [[], "", 0, ""]
        try:
            page = await config.client(session).documents(kb=kb_name, q=(query or "").strip(), limit=config.page_size,
                                                          offset=max(int(start or 0), 0))  # fmt: skip
        except ApiError as exc:
            return [[], "", start, render.note(api_error_text(exc, lang), "error")]
        items = list(page.get("items", []))
        total = int(page.get("total", len(items)))
        first = int(page.get("offset", start)) + 1 if items else 0
        info = t(lang, "docs.page_info", first=first, last=first + len(items) - 1 if items else 0, total=total)
        return [document_rows(items), info, int(page.get("offset", start)), ""]

    list_inputs = [kb, search, offset, session_state, lang_state]
    list_outputs = [table, page_info, offset, status]

    async def first_page(kb_name: str, query: str, _start: int, session: Session | None, lang: str) -> list[Any]:
        return await list_documents(kb_name, query, 0, session, lang)

    async def previous_page(kb_name: str, query: str, start: int, session: Session | None, lang: str) -> list[Any]:
        return await list_documents(kb_name, query, max(int(start or 0) - config.page_size, 0), session, lang)

    async def next_page(kb_name: str, query: str, start: int, session: Session | None, lang: str) -> list[Any]:
        return await list_documents(kb_name, query, int(start or 0) + config.page_size, session, lang)

    async def reload_page(kb_name: str, query: str, start: int, session: Session | None, lang: str) -> list[Any]:
        # After an action: the table follows, the action's own message stays.
        return (await list_documents(kb_name, query, start, session, lang))[:3]

    quiet_outputs = [table, page_info, offset]
    private: dict[str, Any] = {"api_visibility": "private"}
    refresh.click(first_page, list_inputs, list_outputs, **private)
    search.submit(first_page, list_inputs, list_outputs, **private)
    kb.change(first_page, list_inputs, list_outputs, **private)
    tab.select(first_page, list_inputs, list_outputs, **private)
    prev.click(previous_page, list_inputs, list_outputs, **private)
    nxt.click(next_page, list_inputs, list_outputs, **private)

    async def upload_files(  # noqa: PLR0917 - Gradio passes the inputs positionally
        paths: list[str] | None, group_text: str, tag_text: str, kb_name: str, session: Session | None, lang: str
    ) -> AsyncIterator[list[Any]]:
        chosen = [Path(p) for p in paths or []]
        if session is None:
            yield [render.note(t(lang, "signout.expired"), "error"), gr.skip()]
            return
        if not chosen:
            yield [render.note(t(lang, "docs.no_files"), "error"), gr.skip()]
            return
        client = config.client(session)
        try:
            job = await client.upload(chosen, kb=kb_name, groups=split_list(group_text), tags=split_list(tag_text))
        except ApiError as exc:
            yield [render.note(api_error_text(exc, lang), "error"), gr.skip()]
            return
        finally:
            _remove_uploads(chosen)
        job_id = str(job.get("job_id", ""))
        yield [render.job_progress({**job, "state": job.get("state", "queued")}, lang), None]
        deadline = time.monotonic() + _POLL_LIMIT_S
        while time.monotonic() < deadline:
            try:
                state = await client.job(job_id)
            except ApiError as exc:
                yield [render.note(api_error_text(exc, lang), "error"), gr.skip()]
                return
            yield [render.job_progress(state, lang), gr.skip()]
            if render.job_finished(state):
                return
            await asyncio.sleep(_POLL_S)

    upload_event = upload.click(
        upload_files, [files, groups, tags, kb, session_state, lang_state], [progress, files], show_progress="hidden",
        **private,
    )  # fmt: skip
    upload_event.then(reload_page, list_inputs, quiet_outputs, **private)

    def pick(session: Session | None, kb_name: str, evt: gr.SelectData) -> list[Any]:
        row = evt.row_value or []
        if not row or session is None:
            return [gr.skip()] * 5
        doc_id = str(row[0])
        ticket = config.tickets.issue(session.key, kb_name, doc_id)
        link = (f'<a class="kb-download" href="files?t={ticket}" rel="noreferrer noopener">⬇ '
                f"{render.esc(doc_id)}</a>")  # fmt: skip
        return [doc_id, str(row[6]), str(row[7]), link, False]

    table.select(pick, [session_state, kb], [selected, edit_groups, edit_tags, download, confirm], **private)

    async def act(action: str, doc_id: str, kb_name: str, session: Session | None, lang: str, **kw: Any) -> str:
        doc_id = (doc_id or "").strip()
        if session is None:
            return render.note(t(lang, "signout.expired"), "error")
        if not doc_id:
            return render.note(t(lang, "docs.select_first"), "error")
        client = config.client(session)
        try:
            if action == "delete":
                await client.delete_document(doc_id, kb=kb_name)
                return render.note(t(lang, "docs.deleted", doc_id=doc_id), "ok")
            if action == "save":
                await client.update_document(doc_id, kb=kb_name, groups=kw["groups"], tags=kw["tags"])
                return render.note(t(lang, "docs.saved"), "ok")
            if action == "replace":
                path = Path(kw["path"])
                try:
                    job = await client.replace_document(doc_id, path, kb=kb_name)
                finally:
                    _remove_uploads([path])
                return render.job_progress({**job, "state": job.get("state", "queued")}, lang)
            if action == "restore":
                await client.restore(doc_id, int(kw["version"]), kb=kb_name)
                return render.note(t(lang, "docs.restored", doc_id=doc_id, version=int(kw["version"])), "ok")
        except ApiError as exc:
            return render.note(api_error_text(exc, lang), "error")
        raise ValueError(action)

    async def delete_selected(doc_id: str, sure: bool, kb_name: str, session: Session | None, lang: str) -> list[Any]:
        if not sure:
            return [render.note(t(lang, "docs.confirm_first"), "error"), gr.skip()]
        return [await act("delete", doc_id, kb_name, session, lang), False]

    async def save_groups_and_tags(  # noqa: PLR0917 - Gradio passes the inputs positionally
        doc_id: str, group_text: str, tag_text: str, kb_name: str, session: Session | None, lang: str
    ) -> str:
        return await act(
            "save", doc_id, kb_name, session, lang, groups=split_list(group_text), tags=split_list(tag_text)
        )

    async def replace_selected(
        doc_id: str, path: str | None, kb_name: str, session: Session | None, lang: str
    ) -> list[Any]:
        if not path:
            return [render.note(t(lang, "docs.no_files"), "error"), gr.skip()]
        return [await act("replace", doc_id, kb_name, session, lang, path=path), None]

    async def list_versions(doc_id: str, kb_name: str, session: Session | None, lang: str) -> list[Any]:
        if session is None or not (doc_id or "").strip():
            return [[], render.note(t(lang, "docs.select_first"), "error")]
        try:
            items = await config.client(session).versions(doc_id.strip(), kb=kb_name)
        except ApiError as exc:
            return [[], render.note(api_error_text(exc, lang), "error")]
        return [version_rows(items), ""]

    async def restore_version(
        doc_id: str, number: float | None, kb_name: str, session: Session | None, lang: str
    ) -> str:
        if not number:
            return render.note(t(lang, "docs.version"), "error")
        return await act("restore", doc_id, kb_name, session, lang, version=int(number))

    common = [kb, session_state, lang_state]
    delete.click(delete_selected, [selected, confirm, *common], [status, confirm], **private).then(
        reload_page, list_inputs, quiet_outputs, **private
    )
    save_acl_event = save_acl.click(
        save_groups_and_tags, [selected, edit_groups, edit_tags, *common], status, **private
    )
    save_acl_event.then(reload_page, list_inputs, quiet_outputs, **private)
    replace.click(replace_selected, [selected, replacement, *common], [status, replacement], **private)
    show_versions.click(list_versions, [selected, *common], [versions, status], **private)
    restore.click(restore_version, [selected, version, *common], status, **private).then(
        list_versions, [selected, *common], [versions, status], **private
    )
    return DocumentsTab(tab=tab, kb=kb, table=table, refresh_inputs=list_inputs, refresh_outputs=list_outputs)
