"""Plumbing every part uses and no ML: atomic files and manifests, devices and threads, progress and one-line errors, packaged resources, ONNX Runtime sessions."""
