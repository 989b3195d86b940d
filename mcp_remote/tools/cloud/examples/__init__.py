"""Shipped example services (Render, Sentry, GitHub): definitions and OpenAPI subsets, as package data."""

from __future__ import annotations

__all__: list[str] = []
