"""Client input quoted in an error message: short, printable, and never a Python repr."""

DEFAULT_EXCERPT_CHARS = 60


def excerpt(text: str, limit: int = DEFAULT_EXCERPT_CHARS) -> str:
    """`text` in double quotes, cut to `limit` characters, control characters shown as '?'."""
    shown = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return f'"{shown}..."' if len(text) > limit else f'"{shown}"'
