"""What every stage shares: backbones and tokenizers, hidden-state pooling, item text, BM25, calibration, metrics, and the multi-process context training runs in."""
