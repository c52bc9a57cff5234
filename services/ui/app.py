"""The studio: `articleforge ui`, or `streamlit run services/ui/app.py`.

Five pages: an article (the form, its live progress, outline review, the result with rewrite,
redraw and downloads), the history of articles, batches (a CSV of topics sent as one batch,
its counts and items followed, cancel and retry), and playgrounds for text and images alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

logger = logging.getLogger(__name__)
PAGES = Path(__file__).parent / "pages"
# The tab's icon, inline: a `:material/…:` page icon is fetched from fonts.gstatic.com and an
# emoji from a CDN, and the studio must work offline (Material Symbols' edit_note, Apache-2.0).
ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="#ff4b4b"><path d="M3 10h11'
    "v2H3zm0-2h11V6H3zm0 8h7v-2H3zm15.01-3.13.71-.71c.39-.39 1.02-.39 1.41 0l.71.71c.39.39.39 "
    '1.02 0 1.41l-.71.71-2.12-2.12zm-.71.71-5.3 5.3V21h2.12l5.3-5.3-2.12-2.12z"/></svg>'
)

st.set_page_config(page_title="articleforge studio", page_icon=ICON, layout="wide")
navigation = st.navigation(
    [
        st.Page(PAGES / "article.py", title="Article", icon=":material/article:", default=True),
        st.Page(PAGES / "history.py", title="History", icon=":material/history:"),
        st.Page(PAGES / "batch.py", title="Batches", icon=":material/table_rows:"),
        st.Page(PAGES / "text_playground.py", title="Text playground", icon=":material/notes:"),
        st.Page(PAGES / "image_playground.py", title="Image playground", icon=":material/image:"),
    ]
)
try:
    navigation.run()
except Exception as exc:  # the page's own guard missed it: still a sentence, never a traceback
    logger.exception("studio: page %s failed", navigation.title)
    st.error(
        f"Something went wrong in the studio ({type(exc).__name__}); its log has the details.",
        icon=":material/error:",
    )
