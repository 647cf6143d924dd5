"""Payment transactions coming in: one at a time (`POST /transactions`) or in bulk (import)."""
