"""The studio: `articleforge ui`, or `streamlit run services/ui/app.py`.

Four pages: an article (the form, its live progress, outline review, the result with rewrite,
redraw and downloads), the history of articles, and playgrounds for text and images alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

logger = logging.getLogger(__name__)
PAGES = Path(__file__).parent / "pages"

st.set_page_config(
    page_title="articleforge studio", page_icon=":material/edit_note:", layout="wide"
)
navigation = st.navigation(
    [
        st.Page(PAGES / "article.py", title="Article", icon=":material/article:", default=True),
        st.Page(PAGES / "history.py", title="History", icon=":material/history:"),
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
