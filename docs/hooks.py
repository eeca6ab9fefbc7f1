"""MkDocs hook: the API reference renders docstrings as Markdown, where a Sphinx role such as
:func:`grid_points` would keep its ``:func:`` prefix; drop it, keeping the code span."""
import re

_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|obj|exc):(?=<code>)")


def on_page_content(html, page, config, files):
    return _ROLE.sub("", html)
