"""MkDocs hook for the API reference, whose docstrings are written to read well as plain text too.

- dtypes and tokens in angle brackets (``<float>[B, T, I]``, ``<eos>``) outside code would reach the page
  as HTML tags, which a browser hides: they are shown as text;
- a paragraph ending in reStructuredText's ``::`` (a code block follows) ends in one colon.
"""

from __future__ import annotations

import re

_NOT_HTML = re.compile(r"<(/?)(float|float16|float32|float64|int|int32|int64|bool|f|dtype|eos|unk|pad)>")
_RST_BLOCK = re.compile(r"::</p>")


def on_page_content(html: str, **kwargs) -> str:
    html = _NOT_HTML.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}&gt;", html)
    return _RST_BLOCK.sub(":</p>", html)
