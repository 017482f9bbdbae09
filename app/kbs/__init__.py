"""Knowledge bases: creation, settings and the /admin/kbs routes."""
