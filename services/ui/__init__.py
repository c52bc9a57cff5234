"""The studio: a Streamlit front end over the gateway's public API and the services' own."""
