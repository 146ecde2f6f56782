"""A self-hosted todo-list service."""
