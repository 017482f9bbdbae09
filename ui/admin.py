"""The Keys and Audit tabs (admins): create, list and revoke API keys; search the audit log."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui import render
from ui.chat import api_error_text
from ui.client import ApiError
from ui.i18n import t
from ui.session import Labels, Session, UiConfig, split_list

KEY_COLUMNS = ["name", "role", "groups", "kbs", "allow_ips", "created_at", "expires_at", "last_used_at", "active"]
AUDIT_COLUMNS = ["at", "actor", "action", "kb", "target", "status", "ip", "detail"]
ROLES = ["employee", "editor", "admin", "service"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def key_rows(keys: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [[_cell(k.get(column)) for column in KEY_COLUMNS] for k in keys]


def audit_rows(entries: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for entry in entries:
        at = entry.get("at") or entry.get("created_at") or entry.get("time") or ""
        actor = entry.get("actor")
        if isinstance(actor, dict):
            actor = actor.get("name") or actor.get("key_id") or ""
        rows.append([
            _cell(at), _cell(actor), _cell(entry.get("action")), _cell(entry.get("kb")), _cell(entry.get("target")),
            _cell(entry.get("status")), _cell(entry.get("ip")), _cell(entry.get("detail")),
        ])  # fmt: skip
    return rows


@dataclass
class AdminTabs:
    keys_tab: gr.Tab
    audit_tab: gr.Tab


def build_admin(config: UiConfig, labels: Labels, session_state: gr.State, lang_state: gr.State) -> AdminTabs:
    private: dict[str, Any] = {"api_visibility": "private"}
    with gr.Tab(t("en", "tab.keys"), id="keys", visible=False, elem_id="kb-tab-keys") as keys_tab:
        labels.add(keys_tab, label="tab.keys")
        with gr.Accordion(t("en", "keys.create"), open=True) as create_box:
            labels.add(create_box, label="keys.create")
            with gr.Row():
                name = labels.add(gr.Textbox(label=t("en", "keys.name"), elem_id="kb-newkey-name"), label="keys.name")
                role = labels.add(gr.Dropdown(ROLES, value="employee", label=t("en", "keys.role"),
                                              elem_id="kb-newkey-role"), label="keys.role")  # fmt: skip
            with gr.Row():
                groups = labels.add(gr.Textbox(label=t("en", "keys.groups"), elem_id="kb-newkey-groups"),
                                    label="keys.groups")  # fmt: skip
                kbs = labels.add(gr.Textbox("default", label=t("en", "keys.kbs"), elem_id="kb-newkey-kbs"),
                                 label="keys.kbs")  # fmt: skip
            with gr.Row():
                expires = labels.add(gr.Textbox(label=t("en", "keys.expires"), elem_id="kb-newkey-expires"),
                                     label="keys.expires")  # fmt: skip
                allow_ips = labels.add(gr.Textbox(label=t("en", "keys.allow_ips"), elem_id="kb-newkey-ips"),
                                       label="keys.allow_ips")  # fmt: skip
            create = labels.add(gr.Button(t("en", "keys.create_button"), variant="primary", elem_id="kb-newkey-create"),
                                value="keys.create_button")  # fmt: skip
            secret = labels.add(
                gr.Textbox(label=t("en", "keys.secret"), interactive=False, visible=False, buttons=["copy"],
                           elem_id="kb-newkey-secret"),
                label="keys.secret",
            )  # fmt: skip
        keys_status = gr.HTML("", elem_id="kb-keys-status")
        with gr.Row(equal_height=True):
            include_revoked = labels.add(gr.Checkbox(label=t("en", "keys.include_revoked"), elem_id="kb-keys-revoked"),
                                         label="keys.include_revoked")  # fmt: skip
            refresh_keys = labels.add(gr.Button(t("en", "docs.refresh"), elem_id="kb-keys-refresh", scale=0),
                                      value="docs.refresh")  # fmt: skip
        keys_table = gr.Dataframe(headers=KEY_COLUMNS, datatype="str", interactive=False, elem_id="kb-keys-table",
                                  column_count=len(KEY_COLUMNS), wrap=True)  # fmt: skip
        with gr.Row(equal_height=True):
            revoke_name = labels.add(gr.Textbox(label=t("en", "keys.revoke_name"), elem_id="kb-revoke-name"),
                                     label="keys.revoke_name")  # fmt: skip
            revoke = labels.add(gr.Button(t("en", "keys.revoke"), variant="stop", elem_id="kb-revoke", scale=0),
                                value="keys.revoke")  # fmt: skip

    with gr.Tab(t("en", "tab.audit"), id="audit", visible=False, elem_id="kb-tab-audit") as audit_tab:
        labels.add(audit_tab, label="tab.audit")
        with gr.Row():
            since = labels.add(gr.Textbox("24h", label=t("en", "audit.since"), elem_id="kb-audit-since"),
                               label="audit.since")  # fmt: skip
            actor = labels.add(gr.Textbox(label=t("en", "audit.actor"), elem_id="kb-audit-actor"), label="audit.actor")
            action = labels.add(gr.Textbox(label=t("en", "audit.action"), elem_id="kb-audit-action"),
                                label="audit.action")  # fmt: skip
            kb = labels.add(gr.Textbox(label=t("en", "audit.kb"), elem_id="kb-audit-kb"), label="audit.kb")
            status = labels.add(gr.Textbox(label=t("en", "audit.status"), elem_id="kb-audit-status"),
                                label="audit.status")  # fmt: skip
        search = labels.add(gr.Button(t("en", "audit.search"), variant="primary", elem_id="kb-audit-search"),
                            value="audit.search")  # fmt: skip
        audit_table = gr.Dataframe(headers=AUDIT_COLUMNS, datatype="str", interactive=False, elem_id="kb-audit-table",
                                   column_count=len(AUDIT_COLUMNS), wrap=True)  # fmt: skip
        with gr.Row(equal_height=True):
            prev = labels.add(gr.Button(t("en", "docs.prev"), size="sm", elem_id="kb-audit-prev"), value="docs.prev")
            page_info = gr.Markdown("", elem_id="kb-audit-page")
            nxt = labels.add(gr.Button(t("en", "docs.next"), size="sm", elem_id="kb-audit-next"), value="docs.next")
        audit_status = gr.HTML("", elem_id="kb-audit-msg")
        offset = gr.State(0)

    # -- keys -------------------------------------------------------------------------------------
    async def list_keys(revoked: bool, session: Session | None, lang: str) -> list[Any]:
        if session is None:
            return [[], render.note(t(lang, "signout.expired"), "error")]
        try:
            keys = await config.client(session).keys(include_revoked=bool(revoked))
        except ApiError as exc:
            return [[], render.note(api_error_text(exc, lang), "error")]
        return [key_rows(keys), gr.skip()]

    async def create_key(  # noqa: PLR0917 - Gradio passes the inputs positionally
        key_name: str, key_role: str, group_text: str, kb_text: str, lifetime: str, cidrs: str,
        session: Session | None, lang: str,
    ) -> list[Any]:  # fmt: skip
        if session is None:
            return [gr.update(visible=False, value=""), render.note(t(lang, "signout.expired"), "error")]
        try:
            created = await config.client(session).create_key(
                name=(key_name or "").strip(), role=key_role, groups=split_list(group_text),
                kbs=split_list(kb_text) or ["default"], expires=(lifetime or "").strip(), allow_ips=split_list(cidrs),
            )  # fmt: skip
        except ApiError as exc:
            return [gr.update(visible=False, value=""), render.note(api_error_text(exc, lang), "error")]
        # Shown once, in this response only: the API keeps a hash.
        return [gr.update(visible=True, value=created.get("key", "")),
                render.note(t(lang, "keys.created", name=created.get("name", key_name)), "ok")]  # fmt: skip

    async def revoke_key(key_name: str, session: Session | None, lang: str) -> list[Any]:
        if session is None or not (key_name or "").strip():
            return [gr.skip(), render.note(t(lang, "keys.revoke_name"), "error")]
        try:
            await config.client(session).revoke_key(key_name.strip())
        except ApiError as exc:
            return [gr.skip(), render.note(api_error_text(exc, lang), "error")]
        return ["", render.note(t(lang, "keys.revoked", name=key_name.strip()), "ok")]

    key_list_inputs = [include_revoked, session_state, lang_state]
    key_list_outputs = [keys_table, keys_status]
    create.click(
        create_key, [name, role, groups, kbs, expires, allow_ips, session_state, lang_state], [secret, keys_status],
        **private,
    ).then(list_keys, key_list_inputs, key_list_outputs, **private)  # fmt: skip
    refresh_keys.click(list_keys, key_list_inputs, key_list_outputs, **private)
    include_revoked.change(list_keys, key_list_inputs, key_list_outputs, **private)
    keys_tab.select(list_keys, key_list_inputs, key_list_outputs, **private)
    revoke.click(revoke_key, [revoke_name, session_state, lang_state], [revoke_name, keys_status], **private).then(
        list_keys, key_list_inputs, key_list_outputs, **private
    )

    # -- audit ------------------------------------------------------------------------------------
    async def query_audit(  # noqa: PLR0917 - Gradio passes the inputs positionally
        since_text: str, actor_text: str, action_text: str, kb_text: str, status_text: str, start: int,
        session: Session | None, lang: str,
    ) -> list[Any]:  # fmt: skip
        if session is None:
            return [[], "", 0, render.note(t(lang, "signout.expired"), "error")]
        filters: dict[str, str | int] = {
            "since": (since_text or "").strip(), "actor": (actor_text or "").strip(),
            "action": (action_text or "").strip(), "kb": (kb_text or "").strip(),
            "limit": config.page_size, "offset": max(int(start or 0), 0), "order": "desc",
        }  # fmt: skip
        if (status_text or "").strip():
            filters["status"] = status_text.strip()
        try:
            page = await config.client(session).audit(**filters)
        except ApiError as exc:
            return [[], "", start, render.note(api_error_text(exc, lang), "error")]
        entries = list(page.get("entries", []))
        total = int(page.get("total", len(entries)))
        first = int(page.get("offset", 0)) + 1 if entries else 0
        info = t(lang, "docs.page_info", first=first, last=first + len(entries) - 1 if entries else 0, total=total)
        return [audit_rows(entries), info, int(page.get("offset", 0)), ""]

    filters_in = [since, actor, action, kb, status]

    def paged(step: int) -> Any:
        async def handler(  # noqa: PLR0917 - Gradio passes the inputs positionally
            since_text: str, actor_text: str, action_text: str, kb_text: str, status_text: str, start: int,
            session: Session | None, lang: str,
        ) -> list[Any]:  # fmt: skip
            moved = 0 if step == 0 else max(int(start or 0) + step * config.page_size, 0)
            return await query_audit(since_text, actor_text, action_text, kb_text, status_text, moved, session, lang)

        return handler

    first, previous, following = paged(0), paged(-1), paged(1)

    audit_inputs = [*filters_in, offset, session_state, lang_state]
    audit_outputs = [audit_table, page_info, offset, audit_status]
    search.click(first, audit_inputs, audit_outputs, **private)
    audit_tab.select(first, audit_inputs, audit_outputs, **private)
    prev.click(previous, audit_inputs, audit_outputs, **private)
    nxt.click(following, audit_inputs, audit_outputs, **private)
    return AdminTabs(keys_tab=keys_tab, audit_tab=audit_tab)
