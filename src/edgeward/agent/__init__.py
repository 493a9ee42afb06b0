"""The daemon: sources, windowing, inference, summaries, uplink and the local API."""
