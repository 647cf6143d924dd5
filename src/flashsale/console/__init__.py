"""The operator console: one server-rendered page, a little vanilla JavaScript, and the admin
read it needs that the public API does not give (units sold per product)."""
