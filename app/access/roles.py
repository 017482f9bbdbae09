"""Roles and the permissions each one carries. One table, read by every route's dependency."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    admin = "admin"
    editor = "editor"
    employee = "employee"
    service = "service"
    # Not a key's role: what a request without a key gets when anonymous access is switched on.
    anonymous = "anonymous"


class Permission(StrEnum):
    ask = "ask"
    search = "search"
    feedback = "feedback"
    read_documents = "read_documents"  # list, show and download documents the caller's groups allow
    write_documents = "write_documents"  # upload, replace, delete, change groups and tags
    manage_keys = "manage_keys"
    manage_kbs = "manage_kbs"
    read_audit = "read_audit"


_EMPLOYEE = frozenset({Permission.ask, Permission.search, Permission.feedback, Permission.read_documents})

PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.admin: frozenset(Permission),
    Role.editor: _EMPLOYEE | {Permission.write_documents},
    Role.employee: _EMPLOYEE,
    Role.service: frozenset({Permission.ask, Permission.search}),
    Role.anonymous: frozenset({Permission.ask, Permission.search}),
}

KEY_ROLES = (Role.admin, Role.editor, Role.employee, Role.service)
