"""I-Scene model core: TRELLIS-compatible stage 1 with Scene Context Attention, rectified flow,
view-centric space utilities and metrics."""
__version__ = "0.1.0"
