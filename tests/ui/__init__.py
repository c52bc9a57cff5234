"""The studio (services/ui) driven by AppTest and by a real browser."""
