"""Torch-free input preprocessing: images (Pillow + numpy), text and audio.

Each submodule holds a spec dataclass that is stored in the artifact manifest and the
functions that turn raw inputs into model-ready numpy arrays with it.
"""
