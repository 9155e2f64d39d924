"""clusterlab's terminal UI: a Textual app that drives the headless engine."""
