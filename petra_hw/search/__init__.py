"""The hardware-aware search: space, variation, selection, strategies, and the tune loop."""
