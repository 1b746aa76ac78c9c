"""The operations console (`/console`): server-rendered, read-only pages."""
