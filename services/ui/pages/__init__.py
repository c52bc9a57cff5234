"""The studio's pages, run by `st.navigation` in services/ui/app.py."""
