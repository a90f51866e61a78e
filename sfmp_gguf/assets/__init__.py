"""Demo and test assets, made from packages by the project's own code and cached."""
