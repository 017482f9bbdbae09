"""The audit trail: who asked, searched, read or changed what, and the /admin/audit routes."""
