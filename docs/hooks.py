"""MkDocs hook: docstrings write dtypes and tokens in angle brackets (``<float>[B, T, I]``, ``<eos>``); where
they stand outside code, Markdown passes them on as HTML tags, which a browser hides. Show them as text."""

from __future__ import annotations

import re

_NOT_HTML = re.compile(r"<(/?)(float|float16|float32|float64|int|int32|int64|bool|f|dtype|eos|unk|pad)>")


def on_page_content(html: str, **kwargs) -> str:
    return _NOT_HTML.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}&gt;", html)
